"""``mhc-calibrate ckpt=PATH``: calibrated probabilities and tuned thresholds per head.

Fits each head's temperature (or Platt scaling, ``method=platt``) and each binary or multilabel
output's threshold on the validation split, reports the expected calibration error and Brier
score before and after (validation and test), and writes the calibrated checkpoint, which
``mhc.load``, ``mhc-predict``, ``mhc-export`` and ``mhc-serve`` then use. Examples::

    mhc-calibrate ckpt=outputs/train/<date>/checkpoints/best-epoch04.ckpt
    mhc-calibrate ckpt=... data=manifest data.train=train.csv data.val=val.csv threshold=f1
    mhc-calibrate ckpt=... threshold={spam: precision@0.95} min_confidence=0.6 method=platt
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mhc.api.calibrate import REPORT_FILE, calibrate
from mhc.cli.common import calibration_table, console, hydra_app


@hydra_app("calibrate")
def main(cfg: DictConfig) -> None:
    path, report = calibrate(cfg)
    console.print(calibration_table(report))
    console.print(f"calibrated checkpoint written to {path}")
    console.print(f"report and reliability diagrams in {Path(cfg.paths.output_dir) / REPORT_FILE} and beside it")


if __name__ == "__main__":
    main()
