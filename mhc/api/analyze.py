"""Attention-head analysis and head pruning of a checkpoint, as ``mhc-analyze`` and ``mhc-prune`` run them."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

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
from mhc.analysis.report import Analysis, write_report
from mhc.analysis.report import analyze as analyze_net
from mhc.api.build import build_loggers, checkpoint_with_data
from mhc.api.config import ConfigLike, as_config
from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError
from mhc.io import save_checkpoint
from mhc.model.net import MultiHeadNet

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


@dataclass
class AnalysisResult:
    """The analysis (patterns, importance, redundancy, pruning curve) and its report's path."""

    analysis: Analysis
    report: Path


def analyze(config: ConfigLike = None, *, ckpt: str | Path | None = None, output_dir: str | Path | None = None,
            config_dir: str | Path | None = None) -> AnalysisResult:
    """Attention-head analysis of a transformer checkpoint ``ckpt`` on the configured data:
    ``report.md`` with figures and ``analysis.json`` in ``output_dir``, figures to the loggers."""
    cfg = as_config(config, "analyze", output_dir, config_dir, ckpt=ckpt)
    module, datamodule, _ = checkpoint_with_data(cfg)
    batches = split_batches(datamodule, cfg.split, cfg.max_batches)
    importance_batches = split_batches(datamodule, cfg.importance_split, cfg.max_batches) if cfg.importance_split else None
    curve = cfg.prune
    analysis = analyze_net(
        module.net,
        batches,
        importance_batches,
        samples=cfg.samples if isinstance(cfg.samples, int) else list(cfg.samples),
        fractions=list(curve.fractions or []),
        random_seeds=curve.random_seeds,
        task=curve.rank_by,
        threshold=cfg.pattern_threshold,
        recompute_every=curve.recompute_every,
    )
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    report = write_report(analysis, cfg.paths.output_dir, f"Attention-head analysis of {cfg.ckpt} ({cfg.split} split)", loggers)
    for logger in loggers:
        logger.finalize("success")
    return AnalysisResult(analysis=analysis, report=Path(report))


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


def prune(config: ConfigLike = None, *, ckpt: str | Path | None = None, output_dir: str | Path | None = None,
          config_dir: str | Path | None = None) -> dict[str, Any]:
    """Remove a ``fraction`` of the attention heads of checkpoint ``ckpt`` (by importance, or
    ``strategy=random``), write the pruned checkpoint to ``output`` and compare it with the
    original on ``split``: the report, also written beside it as ``prune.json``."""
    cfg = as_config(config, "prune", output_dir, config_dir, ckpt=ckpt)
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
    return report
