"""``mhc-prune ckpt=PATH fraction=0.3``: remove attention heads and write the pruned checkpoint.

Heads are ranked by importance (Michel et al. 2019, measured on ``importance_split``) or
randomly (``strategy=random``), removed physically, and the pruned model is compared with the
original on ``split``: parameters, bytes of weights, forward latency and per-head metrics. Example::

    mhc-prune ckpt=outputs/sequences/<date>/checkpoints/last.ckpt data=sequences fraction=0.3
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from mhc.analysis.attention import HeadLayout
from mhc.analysis.importance import move, transformer_encoder
from mhc.analysis.pruning import (
    STRATEGIES,
    evaluate_heads,
    importance_order,
    parameter_count,
    pruned_copy,
    pruning_order,
    select_heads,
)
from mhc.cli.analyze import split_batches
from mhc.cli.common import checkpoint_with_data, console, hydra_app
from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError
from mhc.io import save_checkpoint
from mhc.model.net import MultiHeadNet


@torch.no_grad()
def forward_latency(models: list[MultiHeadNet], inputs: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds per forward pass of each model, measured alternately on the same batch."""
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        model.eval()(inputs)  # warm-up
    for _ in range(repeats):
        for model, samples in zip(models, times):
            start = time.perf_counter()
            model(inputs)
            samples.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def comparison_table(original: dict[str, Any], pruned: dict[str, Any]) -> Table:
    table = Table(title="original against pruned", title_justify="left")
    for column in ("", "original", "pruned", "pruned / original"):
        table.add_column(column, justify="right")
    for key in original:
        a, b = original[key], pruned[key]
        cell = (lambda v: f"{v:.4f}") if isinstance(a, float) else str
        table.add_row(key, cell(a), cell(b), f"{b / a:.3f}" if a else "-")
    return table


def summary(net: MultiHeadNet, metrics: dict[str, dict[str, float]], latency: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "heads": sum(map(len, HeadLayout.of(transformer_encoder(net)).kept)),
        "parameters": parameter_count(net),
        "weight bytes": sum(t.numel() * t.element_size() for t in net.state_dict().values()),
        "latency ms": latency * 1e3,
    }
    row.update({f"{task} acc": values["acc"] for task, values in metrics.items()})
    row["mean acc"] = sum(v["acc"] for v in metrics.values()) / len(metrics)
    return row


def run_pruning(cfg: DictConfig) -> Path:
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy: expected one of {list(STRATEGIES)}, got '{cfg.strategy}'")
    if not 0.0 < cfg.fraction < 1.0:
        raise ConfigError(f"fraction: expected a fraction of the heads in (0, 1), got {cfg.fraction}")
    module, datamodule, _ = checkpoint_with_data(cfg)
    net = module.net
    layout = HeadLayout.of(transformer_encoder(net))
    if cfg.strategy == "importance":
        batches = split_batches(datamodule, cfg.importance_split or cfg.split, cfg.max_batches)
        order = importance_order(net, batches, cfg.rank_by, cfg.recompute_every)
    else:
        order = pruning_order(layout.scatter([torch.zeros(len(k)) for k in layout.kept]), cfg.strategy, cfg.seed)
    heads = select_heads(order, layout, cfg.fraction)
    pruned = pruned_copy(net, heads)

    evaluation = split_batches(datamodule, cfg.split, None)
    metrics = {"original": evaluate_heads(net, evaluation), "pruned": evaluate_heads(pruned, evaluation)}
    output = save_checkpoint(pruned, cfg.output, metrics["pruned"])
    inputs = move(batch_inputs(evaluation[0]), next(net.parameters()).device)
    latency = forward_latency([net, pruned], inputs, cfg.repeats)
    rows = {"original": summary(net, metrics["original"], latency[0]), "pruned": summary(pruned, metrics["pruned"], latency[1])}
    report = {"checkpoint": str(cfg.ckpt), "pruned_checkpoint": str(output), "strategy": cfg.strategy,
              "fraction": cfg.fraction, "pruned_heads": heads, "split": cfg.split, "batch": len(inputs), **rows}
    (output.parent / "prune.json").write_text(json.dumps(report, indent=2))
    console.print(f"pruned heads per layer (original indices): {heads}")
    console.print(comparison_table(rows["original"], rows["pruned"]))
    console.print(f"pruned checkpoint written to {output} ({output.stat().st_size / 1e6:.2f} MB, weights only)")
    return output


@hydra_app("prune")
def main(cfg: DictConfig) -> None:
    run_pruning(cfg)


if __name__ == "__main__":
    main()
