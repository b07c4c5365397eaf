"""``mhc-eval ckpt=PATH``: per-head metrics of a checkpoint on one split of its data.

Examples::

    mhc-eval ckpt=outputs/train/<date>/checkpoints/best-epoch04.ckpt            # test split
    mhc-eval ckpt=... split=val
    mhc-eval ckpt=... data=manifest data.train=train.csv data.test=test.csv
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mhc.api.evaluate import evaluate
from mhc.cli.common import console, hydra_app, results_table


@hydra_app("eval")
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg)
    console.print(f"checkpoint: {cfg.ckpt}")
    console.print(results_table(results, f"{cfg.split} metrics"))
    console.print(f"metrics written to {Path(cfg.paths.output_dir) / 'metrics.json'}")


if __name__ == "__main__":
    main()
