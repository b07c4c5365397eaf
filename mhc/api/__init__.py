"""The library under the commands: compose a config, train, evaluate, predict, and the rest.

Each function takes a composed config (:func:`compose_config`) or a list of overrides, runs
what the matching ``mhc-*`` command runs, and returns its results instead of printing them::

    from mhc.api import train, evaluate
    run = train(["backbone=resnet18", "trainer.max_epochs=10"], output_dir="runs/r18")
    run.metrics["val"]["shape"]["acc"], run.best_checkpoint
    evaluate(["split=test"], ckpt=run.best_checkpoint)["shape"]["f1"]
"""

from mhc.api.analyze import analyze, prune
from mhc.api.calibrate import calibrate
from mhc.api.config import compose_config
from mhc.api.evaluate import evaluate, predict
from mhc.api.export import export
from mhc.api.shard import shard
from mhc.api.train import PretrainResult, TrainResult, pretrain, train

__all__ = [
    "PretrainResult",
    "TrainResult",
    "analyze",
    "calibrate",
    "compose_config",
    "evaluate",
    "export",
    "predict",
    "pretrain",
    "prune",
    "shard",
    "train",
]
