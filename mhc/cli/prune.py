"""``mhc-prune ckpt=PATH fraction=0.3``: remove attention heads and write the pruned checkpoint.

Heads are ranked by importance (Michel et al. 2019, measured on ``importance_split``) or
randomly (``strategy=random``), removed physically, and the pruned model is compared with the
original on ``split``: parameters, bytes of weights, forward latency and per-head metrics. Example::

    mhc-prune ckpt=outputs/sequences/<date>/checkpoints/last.ckpt data=sequences fraction=0.3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.table import Table

from mhc.api.analyze import prune
from mhc.cli.common import console, hydra_app


def comparison_table(original: dict[str, Any], pruned: dict[str, Any]) -> Table:
    table = Table(title="original against pruned", title_justify="left")
    for column in ("", "original", "pruned", "pruned / original"):
        table.add_column(column, justify="right")
    for key in original:
        a, b = original[key], pruned[key]
        cell = (lambda v: f"{v:.4f}") if isinstance(a, float) else str
        table.add_row(key, cell(a), cell(b), f"{b / a:.3f}" if a else "-")
    return table


@hydra_app("prune")
def main(cfg: DictConfig) -> None:
    report = prune(cfg)
    output = Path(report["pruned_checkpoint"])
    console.print(f"pruned heads per layer (original indices): {report['pruned_heads']}")
    console.print(comparison_table(report["original"], report["pruned"]))
    console.print(f"pruned checkpoint written to {output} ({output.stat().st_size / 1e6:.2f} MB, weights only)")


if __name__ == "__main__":
    main()
