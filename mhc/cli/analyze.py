"""``mhc-analyze ckpt=PATH``: attention-head analysis of a transformer checkpoint.

Writes ``report.md`` with PNG figures (attention maps, rollout, head patterns, importance per
task, redundancy, pruning curve) and ``analysis.json`` to the run folder, and sends figures and
tables to the configured logger. Examples::

    mhc-analyze ckpt=outputs/sequences/<date>/checkpoints/last.ckpt data=sequences
    mhc-analyze ckpt=... data=sequences logger=tensorboard samples=2 prune.random_seeds=5
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from mhc.analysis.report import Analysis, analyze, curve_rows, write_report
from mhc.cli.common import build_loggers, checkpoint_with_data, console, hydra_app
from mhc.errors import ConfigError

SPLITS = ("train", "val", "test")


def split_batches(datamodule: Any, split: str, max_batches: int | None) -> list[Any]:
    """Up to ``max_batches`` batches of ``split`` in a fixed order."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {list(SPLITS)}, got '{split}'")
    datamodule.setup(split)
    loader = datamodule.loader(split, shuffle=False)
    batches = list(itertools.islice(loader, max_batches))
    if not batches:
        raise ConfigError(f"the {split} split has no data to analyse")
    return batches


def curve_table(analysis: Analysis) -> Table:
    tasks = list(analysis.curve[0].accuracy)
    table = Table(title="pruning curve (accuracy)", title_justify="left")
    for column in ["fraction", "heads pruned", "parameters", *tasks, "mean", "random mean"]:
        table.add_column(column, justify="right")
    for row in curve_rows(analysis.curve):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


def run_analysis(cfg: DictConfig) -> Path:
    module, datamodule, _ = checkpoint_with_data(cfg)
    batches = split_batches(datamodule, cfg.split, cfg.max_batches)
    importance_batches = split_batches(datamodule, cfg.importance_split, cfg.max_batches) if cfg.importance_split else None
    prune = cfg.prune
    analysis = analyze(
        module.net,
        batches,
        importance_batches,
        samples=cfg.samples if isinstance(cfg.samples, int) else list(cfg.samples),
        fractions=list(prune.fractions or []),
        random_seeds=prune.random_seeds,
        task=prune.rank_by,
        threshold=cfg.pattern_threshold,
        recompute_every=prune.recompute_every,
    )
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    report = write_report(analysis, cfg.paths.output_dir, f"Attention-head analysis of {cfg.ckpt} ({cfg.split} split)", loggers)
    for logger in loggers:
        logger.finalize("success")
    counts = {p: sum(row.count(p) for row in analysis.labels) for p in ("vertical", "diagonal", "positional", "block", "broad")}
    console.print("head patterns: " + ", ".join(f"{p} {n}" for p, n in counts.items() if n))
    if analysis.curve:
        console.print(curve_table(analysis))
    console.print(f"report written to {report}")
    return report


@hydra_app("analyze")
def main(cfg: DictConfig) -> None:
    run_analysis(cfg)


if __name__ == "__main__":
    main()
