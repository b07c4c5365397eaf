"""``mhc-analyze ckpt=PATH``: attention-head analysis of a transformer checkpoint.

Writes ``report.md`` with PNG figures (attention maps, rollout, head patterns, importance per
task, redundancy, pruning curve) and ``analysis.json`` to the run folder, and sends figures and
tables to the configured logger. Examples::

    mhc-analyze ckpt=outputs/sequences/<date>/checkpoints/last.ckpt data=sequences
    mhc-analyze ckpt=... data=sequences logger=tensorboard samples=2 prune.random_seeds=5
"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.table import Table

from mhc.analysis.report import Analysis, curve_rows
from mhc.api.analyze import analyze
from mhc.cli.common import console, hydra_app


def curve_table(analysis: Analysis) -> Table:
    tasks = list(analysis.curve[0].accuracy)
    table = Table(title="pruning curve (accuracy)", title_justify="left")
    for column in ["fraction", "heads pruned", "parameters", *tasks, "mean", "random mean"]:
        table.add_column(column, justify="right")
    for row in curve_rows(analysis.curve):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


@hydra_app("analyze")
def main(cfg: DictConfig) -> None:
    result = analyze(cfg)
    analysis = result.analysis
    counts = {p: sum(row.count(p) for row in analysis.labels) for p in ("vertical", "diagonal", "positional", "block", "broad")}
    console.print("head patterns: " + ", ".join(f"{p} {n}" for p, n in counts.items() if n))
    if analysis.curve:
        console.print(curve_table(analysis))
    console.print(f"report written to {result.report}")


if __name__ == "__main__":
    main()
