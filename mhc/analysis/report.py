"""The attention-head analysis of a trained transformer, and its report (Markdown + PNG figures).

:func:`analyze` measures; :func:`write_report` draws, writes ``report.md`` with ``figures/``,
and sends the same figures and tables to the run's experiment loggers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mhc.analysis import figures
from mhc.analysis.attention import (
    PATTERNS,
    HeadLayout,
    HeadPatterns,
    PatternMeter,
    RedundancyMeter,
    pattern_labels,
)
from mhc.analysis.importance import combined_importance, head_importance, move, transformer_encoder
from mhc.analysis.maps import patch_grid, sample_maps
from mhc.analysis.pruning import CurvePoint, importance_order, mean_random, pruning_curve
from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError
from mhc.model.backbones.base import HEAD_PRUNING
from mhc.model.net import MultiHeadNet
from mhc.tracking import log_figure, log_text

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass
class Analysis:
    """Everything measured about one model's heads on one data split."""

    layout: HeadLayout
    patterns: HeadPatterns
    labels: list[list[str]]
    importance: dict[str, Tensor]
    ranking: Tensor
    redundancy: Tensor
    curve: list[CurvePoint] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # maps, rollout, token labels (and image)
    num_samples: int = 0

    def summary(self) -> dict[str, Any]:
        """Plain-data tables (JSON-able): per-head patterns, labels, importance; the curve."""
        heads = []
        for layer, kept in enumerate(self.layout.kept):
            for head in kept:
                row: dict[str, Any] = {"layer": layer, "head": head, "pattern": self.labels[layer][head]}
                row.update({k: round(float(v[layer, head]), 4) for k, v in self.patterns.as_dict().items()})
                row.update({f"importance/{t}": round(float(s[layer, head]), 4) for t, s in self.importance.items()})
                heads.append(row)
        return {
            "samples": self.num_samples,
            "heads": heads,
            "pruning_curve": [
                {"strategy": p.strategy, "seed": p.seed, "fraction": p.fraction, "heads_pruned": p.heads_pruned,
                 "parameters": p.parameters, "accuracy": p.accuracy, "mean_accuracy": p.mean_accuracy}
                for p in self.curve
            ],
        }


def chosen_inputs(batches: Sequence[Mapping[str, Any]], samples: int | Sequence[int]) -> Tensor:
    """The inputs of the first ``samples`` samples, or of the samples at those indices."""
    inputs = torch.cat([batch_inputs(b) for b in batches])
    if isinstance(samples, int):
        return inputs[:samples]
    bad = [i for i in samples if not 0 <= i < len(inputs)]
    if bad:
        raise ConfigError(f"samples: indices {bad} are outside the {len(inputs)} samples analysed")
    return inputs[list(samples)]


def analyze(
    net: MultiHeadNet,
    batches: Iterable[Mapping[str, Any]],
    importance_batches: Iterable[Mapping[str, Any]] | None = None,
    samples: int | Sequence[int] = 4,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    random_seeds: int = 3,
    task: str | None = None,
    threshold: float = 0.5,
    recompute_every: int = 1,
) -> Analysis:
    """Measure every head of ``net`` on ``batches`` (loader batches of one split): patterns and
    labels, redundancy, importance per task, and the pruning curve (importance vs random order,
    pruned by the largest importance over tasks, or by ``task``'s, re-measured after every
    ``recompute_every`` heads; see :func:`~mhc.analysis.pruning.importance_order`).

    ``samples``: how many samples (the first ones), or which (indices into ``batches``), get
    attention-map and rollout figures. ``importance_batches`` (another split, e.g. training data) keeps the importance that ranks
    heads apart from the data the pruning curve is scored on; by default ``batches`` serve both.
    """
    encoder = transformer_encoder(net)
    layout = HeadLayout.of(encoder)
    device = next(net.parameters()).device
    batches = [move(b, device) for b in batches]
    if not batches:
        raise ValueError("the analysis split has no data")
    net.eval()
    patterns, redundancy = PatternMeter(grid=patch_grid(net, batch_inputs(batches[0]))), RedundancyMeter()
    count = 0
    with torch.no_grad():
        for batch in batches:
            inputs = batch_inputs(batch)
            maps, padding = net.attention(inputs)
            patterns.update(maps, padding)
            redundancy.update(maps, padding)
            count += len(inputs)
    measured = patterns.compute(layout)
    importance_batches = batches if importance_batches is None else [move(b, device) for b in importance_batches]
    importance = head_importance(net, importance_batches)
    ranking = combined_importance(importance, task)
    curve = []
    if fractions and not net.backbone.supports(HEAD_PRUNING):
        log.warning(f"backbone '{net.backbone_config.get('name')}' cannot remove attention heads; "
                    "the pruning curve is left out (vit_* and seq_* models have it)")
    elif fractions:
        order = importance_order(net, importance_batches, task, recompute_every)
        curve = pruning_curve(net, batches, order, fractions, random_seeds)
    return Analysis(
        layout=layout,
        patterns=measured,
        labels=pattern_labels(measured, threshold),
        importance=importance,
        ranking=ranking,
        redundancy=redundancy.compute(),
        curve=curve,
        samples=sample_maps(net, chosen_inputs(batches, samples)),
        num_samples=count,
    )


# -- report ---------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def redundant_pairs(analysis: Analysis, top: int = 8) -> list[tuple[str, str, float]]:
    names = analysis.layout.names()
    sim = analysis.redundancy
    pairs = [(names[i], names[j], float(sim[i, j])) for i in range(len(names)) for j in range(i + 1, len(names))]
    return sorted(pairs, key=lambda p: -p[2])[:top]


def curve_rows(curve: Sequence[CurvePoint]) -> list[list[Any]]:
    rows = []
    for point in sorted((p for p in curve if p.strategy == "importance"), key=lambda p: p.fraction):
        rows.append([point.fraction, point.heads_pruned, point.parameters, *point.accuracy.values(),
                     point.mean_accuracy, mean_random(curve, point.fraction)])
    return rows


def write_report(analysis: Analysis, out_dir: str | Path, title: str = "Attention-head analysis", loggers: Sequence[Any] = ()) -> Path:
    """Write ``report.md``, ``figures/*.png`` and ``analysis.json`` to ``out_dir``; log the figures
    and the tables to ``loggers``. Returns the report's path."""
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[tuple[str, str, Any]] = []  # (file stem, caption, figure)
    head_names = [[f"L{layer}H{head}" for head in kept] for layer, kept in enumerate(analysis.layout.kept)]
    for i, sample in enumerate(analysis.samples):
        fig = figures.attention_maps_figure(sample["maps"], sample["labels"], head_names, f"attention maps, sample {i}")
        drawn.append((f"attention_sample{i}", f"Attention maps of sample {i} (rows: layers; keys on x, queries on y)", fig))
    if analysis.samples:
        images = [s["image"] for s in analysis.samples] if "image" in analysis.samples[0] else None
        fig = figures.rollout_figure([s["rollout"] for s in analysis.samples], [s["labels"] for s in analysis.samples], images)
        drawn.append(("rollout", "Attention rollout (Abnar & Zuidema 2020): whole-model attribution per sample", fig))
    stats = analysis.patterns.as_dict()
    drawn.append(("patterns", "Head pattern statistics over the data (grey: pruned)",
                  figures.head_grid_figure(stats, "head patterns", limits=(0.0, 1.0))))
    drawn.append(("importance", "Head importance per task, I_h = E|dL/dxi_h| normalised per layer (Michel et al. 2019)",
                  figures.head_grid_figure({**analysis.importance, "ranking": analysis.ranking}, "head importance", cmap="inferno")))
    drawn.append(("redundancy", "Head redundancy", figures.redundancy_figure(analysis.redundancy, analysis.layout.names())))
    if analysis.curve:
        drawn.append(("pruning_curve", "Pruning curve: accuracy against the fraction of heads pruned",
                      figures.pruning_curve_figure(analysis.curve)))
    for stem, _, fig in drawn:
        fig.savefig(figure_dir / f"{stem}.png", dpi=110)
        log_figure(loggers, f"analysis/{stem}", fig)
        figures.close(fig)

    captions = {stem: caption for stem, caption, _ in drawn}

    def image(stem: str) -> str:
        return f"![{captions[stem]}](figures/{stem}.png)\n\n*{captions[stem]}*\n" if stem in captions else ""

    tasks = list(analysis.importance)
    counts = {p: sum(row.count(p) for row in analysis.labels) for p in PATTERNS}
    head_rows = [
        [f"L{row['layer']}H{row['head']}", row["pattern"], *(row[k] for k in stats), *(row[f"importance/{t}"] for t in tasks)]
        for row in analysis.summary()["heads"]
    ]
    sections = [
        f"# {title}\n",
        f"{analysis.num_samples} samples; {sum(map(len, analysis.layout.kept))} heads in {analysis.layout.depth} layers.\n",
        "## Attention maps\n",
        *(image(f"attention_sample{i}") for i in range(len(analysis.samples))),
        image("rollout"),
        "## Head patterns\n",
        "Entropy is divided by log(number of keys) (0: one key, 1: uniform); *column* is the mass on the one key "
        "that draws the most attention in a sample. A head is *vertical*, *diagonal* or *positional* when that "
        "key, the token itself, or the previous/next token holds the most mass and at least the threshold; else "
        "*block* when its local window does; else *broad*.\n",
        "Patterns: " + ", ".join(f"{p} {n}" for p, n in counts.items()) + "\n",
        markdown_table(["head", "pattern", *stats, *(f"importance {t}" for t in tasks)], head_rows) + "\n",
        image("patterns"),
        "## Head importance\n",
        image("importance"),
        "## Head redundancy\n",
        "Most similar pairs of heads (cosine similarity of their attention maps, averaged over samples):\n",
        markdown_table(["head", "head", "similarity"], redundant_pairs(analysis)) + "\n",
        image("redundancy"),
    ]
    if analysis.curve:
        first = analysis.curve[0]
        sections += [
            "## Pruning curve\n",
            "Heads removed physically: least important first (largest importance over tasks, re-measured as heads "
            "go) against random orders "
            f"({len({p.seed for p in analysis.curve if p.strategy == 'random'})} seeds).\n",
            markdown_table(["fraction", "heads pruned", "parameters", *(f"acc {t}" for t in first.accuracy),
                            "mean acc (importance)", "mean acc (random)"], curve_rows(analysis.curve)) + "\n",
            image("pruning_curve"),
        ]
    report = "\n".join(s for s in sections if s)
    path = out_dir / "report.md"
    path.write_text(report)
    (out_dir / "analysis.json").write_text(json.dumps(analysis.summary(), indent=2))
    log_text(loggers, "analysis/report", report)
    for logger in loggers:
        for point in analysis.curve:
            if point.strategy == "importance":
                logger.log_metrics({f"analysis/pruning/{t}/acc": v for t, v in point.accuracy.items()}
                                   | {"analysis/pruning/mean/acc": point.mean_accuracy}, step=round(point.fraction * 1000))
    return path
