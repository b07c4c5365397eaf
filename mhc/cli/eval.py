"""``mhc-eval ckpt=PATH``: per-head metrics of a checkpoint on one split of its data.

Examples::

    mhc-eval ckpt=outputs/train/<date>/checkpoints/best-epoch04.ckpt            # test split
    mhc-eval ckpt=... split=val
    mhc-eval ckpt=... data=manifest data.train=train.csv data.test=test.csv
"""

from __future__ import annotations

import json

from omegaconf import DictConfig
from rich.table import Table

from mhc.api.evaluate import evaluate, metrics_file
from mhc.cli.common import console, hydra_app, results_table


@hydra_app("eval")
def main(cfg: DictConfig) -> None:
    results = evaluate(cfg)
    report = json.loads(metrics_file(cfg).read_text())
    console.print(f"checkpoint: {cfg.ckpt}")
    console.print(results_table(results, f"{cfg.split} metrics" + (f" (with {cfg.tta} TTA)" if cfg.tta else "")))
    for name, rows in report["per_class"].items():
        console.print(per_class_table(name, rows, report["thresholds"].get(name)))
    console.print(f"metrics, per-class scores and confusion matrices written to {metrics_file(cfg)}")


def per_class_table(task: str, rows: list[dict], thresholds: list[float] | None) -> Table:
    """One head's per-class precision, recall, F1 and support (and threshold, for binary and multilabel heads)."""
    title = f"{task}: per class" + (" (at the thresholds shown)" if thresholds else "")
    table = Table(title=title, title_justify="left")
    columns = ["class", "precision", "recall", "f1", "support"] + (["threshold"] if thresholds else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "class" else "right")
    cuts = ([None] + thresholds if len(thresholds) == 1 else thresholds) if thresholds else [None] * len(rows)
    for row, cut in zip(rows, cuts):
        scores = [f"{row[k]:.4f}" for k in ("precision", "recall", "f1")]
        table.add_row(row["class"], *scores, str(row["support"]), *([f"{cut:.3f}" if cut is not None else ""] if thresholds else []))
    return table


if __name__ == "__main__":
    main()
