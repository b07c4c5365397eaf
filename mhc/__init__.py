"""mhc: multi-head classification. One shared backbone, one head per task, trained together.

>>> import mhc
>>> model = mhc.load("outputs/train/<run>/checkpoints/last.ckpt")   # doctest: +SKIP
>>> model.predict(["scene.png"])["shape"].labels                     # doctest: +SKIP
['circle']
>>> run = mhc.train(["backbone=resnet18"], output_dir="runs/r18")     # doctest: +SKIP
>>> run.metrics["val"]["shape"]["acc"], run.best_checkpoint           # doctest: +SKIP
"""

from mhc.errors import CheckpointError, ConfigError, DataError, MhcError
from mhc.io import load, save_export
from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder, Predictor, TaskPrediction
from mhc.processing.processors import ImageProcessor, TextProcessor
from mhc.tasks import TaskSpec

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MhcError",
    "MultiHeadNet",
    "ImageProcessor",
    "OutputDecoder",
    "Predictor",
    "TextProcessor",
    "TaskPrediction",
    "TaskSpec",
    "analyze",
    "calibrate",
    "compose_config",
    "evaluate",
    "export",
    "load",
    "predict",
    "pretrain",
    "prune",
    "save_export",
    "train",
]
__version__ = "0.1.0"

API = ("analyze", "calibrate", "compose_config", "evaluate", "export", "predict", "pretrain", "prune", "train")


def __getattr__(name: str) -> object:
    """:mod:`mhc.api`'s functions, imported on first use: ``mhc.load`` needs no Lightning or Hydra."""
    if name in API:
        import mhc.api

        return getattr(mhc.api, name)
    raise AttributeError(f"module 'mhc' has no attribute '{name}'")
