"""``mhc-train``: fit a multi-head model, test its best checkpoint, print a per-head table.

Examples::

    mhc-train                                   # built-in scenes, compact CNN, CSV logs
    mhc-train backbone=resnet18 tasks.shape.loss=focal logger=tensorboard
    mhc-train data=manifest data.train=train.csv data.val=val.csv
    mhc-train resume=auto                       # continue the newest run from its last.ckpt
    mhc-train --config-dir my_configs experiment=mine   # a folder of your own configs
"""

from __future__ import annotations

from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from mhc.api.train import TrainResult, train
from mhc.cli.common import calibration_table, console, hydra_app, results_table


@rank_zero_only
def show(result: TrainResult) -> None:
    which = "best" if result.best_checkpoint else "last"
    for split, results in result.metrics.items():
        if results:
            console.print(results_table(results, f"{split} metrics of the {which} checkpoint{measured(result, split)}"))
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}")
        console.print(f"last checkpoint: {result.last_checkpoint}")
    if result.calibration is not None:
        console.print(calibration_table(result.calibration))
    for logger, folder in result.log_dirs.items():
        console.print(f"{logger} logs: {folder}")


def measured(result: TrainResult, split: str) -> str:
    """How a table's figures were measured, where another command would need an option to match them."""
    if split == "test" and result.tta:
        return f" (with {result.tta} TTA, as mhc-eval tta={result.tta})"
    return ""


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    show(result)
    return result.score if result.score is not None else result.mean("f1")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
