"""``mhc-eval ckpt=PATH``: per-head metrics of a checkpoint on one split of its data.

Examples::

    mhc-eval ckpt=outputs/train/<date>/checkpoints/best-epoch04.ckpt            # test split
    mhc-eval ckpt=... split=val
    mhc-eval ckpt=... data=manifest data.train=train.csv data.test=test.csv
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from mhc.cli.common import checkpoint_with_data, console, hydra_app, results_table
from mhc.errors import ConfigError

SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict[str, dict[str, float]]:
    if cfg.split not in SPLITS:
        raise ConfigError(f"split: expected one of {list(SPLITS)}, got '{cfg.split}'")
    module, datamodule, trainer = checkpoint_with_data(cfg)
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(module, datamodule=datamodule, verbose=False)
    results = module.last_results.get(cfg.split, {})
    if trainer.is_global_zero:
        console.print(f"checkpoint: {cfg.ckpt}")
        console.print(results_table(results, f"{cfg.split} metrics"))
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps({"checkpoint": str(cfg.ckpt), "split": cfg.split, "metrics": results}, indent=2))
        console.print(f"metrics written to {out}")
    return results


@hydra_app("eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
