"""Which heads to prune, and what pruning costs: per-head metrics against the fraction pruned.

Heads are ranked over the whole model, least important first by the per-layer-normalised
scores of :mod:`mhc.analysis.importance`, or in a seeded random order, and removed physically
(``MultiHeadNet.prune_heads``). A layer always keeps at least one head.

The importance order is built iteratively (Michel et al. 2019, section 4): remove the least
important head(s), measure importance again on the smaller model, repeat. Scores measured once
on the full model miss that heads take over each other's work once some are gone; on the
built-in sequences a one-shot order can remove every head one task relies on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mhc.analysis.attention import HeadLayout
from mhc.analysis.importance import combined_importance, head_importance, move, transformer_encoder
from mhc.data.labels import batch_inputs
from mhc.metrics import HeadMetrics
from mhc.model.net import MultiHeadNet
from mhc.predictor import OutputDecoder

STRATEGIES = ("importance", "random")


def pruning_order(scores: Tensor, strategy: str = "importance", seed: int = 0) -> list[tuple[int, int]]:
    """Remaining heads (layer, original head) in the order they are pruned.

    ``scores`` [layers, heads] (NaN = already pruned): ascending for ``importance``, a
    permutation drawn from ``seed`` for ``random``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"pruning strategy must be one of {list(STRATEGIES)}, got '{strategy}'")
    heads = [(layer, head) for layer, head in torch.nonzero(~torch.isnan(scores)).tolist()]
    if strategy == "importance":
        return sorted(heads, key=lambda lh: (float(scores[lh]), lh))
    permutation = torch.randperm(len(heads), generator=torch.Generator().manual_seed(seed)).tolist()
    return [heads[i] for i in permutation]


def select_heads(order: Sequence[tuple[int, int]], layout: HeadLayout, fraction: float) -> list[list[int]]:
    """The first ``round(fraction * total heads)`` heads of ``order`` per layer, skipping any
    that would leave a layer without heads."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    return take_heads(order, layout, round(fraction * sum(len(k) for k in layout.kept)))


def take_heads(order: Sequence[tuple[int, int]], layout: HeadLayout, count: int) -> list[list[int]]:
    """Up to ``count`` heads from the front of ``order``, per layer, keeping one head in each layer."""
    left = [len(k) for k in layout.kept]
    chosen: list[list[int]] = [[] for _ in layout.kept]
    taken = 0
    for layer, head in order:
        if taken == count:
            break
        if left[layer] > 1 and head in layout.kept[layer] and head not in chosen[layer]:
            chosen[layer].append(head)
            left[layer] -= 1
            taken += 1
    return chosen


def importance_order(
    net: MultiHeadNet, batches: Sequence[Mapping[str, Any]], rank_by: str | None = None, recompute_every: int = 1
) -> list[tuple[int, int]]:
    """Heads (layer, original head) least important first, re-measuring importance on the pruned
    model after every ``recompute_every`` heads (0: measure once). ``net`` is not changed."""
    model = copy.deepcopy(net)
    layout = HeadLayout.of(transformer_encoder(model))
    removable = sum(len(k) for k in layout.kept) - layout.depth
    order: list[tuple[int, int]] = []
    while len(order) < removable:
        scores = combined_importance(head_importance(model, batches), rank_by)
        step = removable - len(order) if recompute_every <= 0 else min(recompute_every, removable - len(order))
        heads = take_heads(pruning_order(scores), layout, step)
        order += sorted(((layer, head) for layer, kept in enumerate(heads) for head in kept),
                        key=lambda lh: float(scores[lh]))
        model.prune_heads(heads)
        layout = HeadLayout.of(transformer_encoder(model))
    return order


def pruned_copy(net: MultiHeadNet, heads: list[list[int]]) -> MultiHeadNet:
    """A copy of ``net`` with ``heads`` removed (the original is untouched)."""
    clone = copy.deepcopy(net)
    if any(heads):
        clone.prune_heads(heads)
    return clone


@torch.no_grad()
def evaluate_heads(net: MultiHeadNet, batches: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-head metrics (accuracy, F1, AUROC) of ``net`` on labelled batches."""
    device = next(net.parameters()).device
    metrics = HeadMetrics(net.tasks).to(device)
    decoder = OutputDecoder(net.tasks.values())
    was_training = net.training
    net.eval()
    try:
        for batch in batches:
            batch = move(batch, device)
            probs = decoder.probabilities(net(batch_inputs(batch)), batch.get("allowed"))
            metrics.update(probs, batch["targets"], batch["label_mask"])
    finally:
        net.train(was_training)
    return metrics.compute()


def parameter_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@dataclass
class CurvePoint:
    """One model of a pruning curve: which strategy (and seed), how much was pruned, how it scores."""

    strategy: str
    seed: int
    fraction: float
    heads_pruned: int
    parameters: int
    accuracy: dict[str, float]

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy)


def pruning_curve(
    net: MultiHeadNet,
    batches: Sequence[Mapping[str, Any]],
    order: Sequence[tuple[int, int]],
    fractions: Sequence[float],
    random_seeds: int = 3,
) -> list[CurvePoint]:
    """Per-head accuracy on ``batches`` of ``net`` pruned in importance ``order`` (see
    :func:`importance_order`) and in ``random_seeds`` random orders, at each fraction of heads."""
    layout = HeadLayout.of(transformer_encoder(net))
    everything = layout.scatter([torch.zeros(len(k)) for k in layout.kept])
    runs = [("importance", 0, list(order))] + [("random", seed, pruning_order(everything, "random", seed)) for seed in range(random_seeds)]
    points = []
    for strategy, seed, ranked in runs:
        for fraction in fractions:
            heads = select_heads(ranked, layout, fraction)
            model = pruned_copy(net, heads)
            results = evaluate_heads(model, batches)
            points.append(CurvePoint(strategy, seed, float(fraction), sum(map(len, heads)), parameter_count(model),
                                     {task: values["acc"] for task, values in results.items()}))
    return points


def mean_random(points: Sequence[CurvePoint], fraction: float) -> float:
    """The mean accuracy over heads of the random orders at ``fraction``, averaged over seeds."""
    values = [p.mean_accuracy for p in points if p.strategy == "random" and p.fraction == fraction]
    return sum(values) / len(values) if values else float("nan")
