"""What attention heads do: rollout, per-head pattern statistics and labels, head redundancy.

All functions take per-layer attention weights ``maps[l]`` of shape [B, H, L, L] (rows are
queries, columns keys; each row sums to 1 over the keys a query may see) and an optional
padding mask [B, L] (True at padding). Padding queries and keys never enter a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PATTERNS = ("vertical", "diagonal", "positional", "block", "broad")


def valid_pairs(padding: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """Bool [B, L, L]: True where both the query and the key are real tokens."""
    if padding is None:
        return torch.ones(batch, length, length, dtype=torch.bool, device=device)
    real = ~padding
    return real[:, :, None] & real[:, None, :]


def attention_rollout(maps: list[Tensor], residual: float = 0.5) -> Tensor:
    """Whole-model attribution (Abnar & Zuidema 2020): [B, L, L], row q = how much each input
    token contributes to output token q through every layer.

    Each layer's heads are averaged, the residual path is added as ``residual * I`` and rows
    are renormalised, then the layers are multiplied from the input up.
    """
    rollout = None
    for weights in maps:
        layer = weights.mean(dim=1)
        eye = torch.eye(layer.shape[-1], device=layer.device, dtype=layer.dtype)
        layer = (1 - residual) * layer + residual * eye
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rollout = layer if rollout is None else layer @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs at least one layer")
    return rollout


def local_window(length: int, grid: int | None = None, radius: int = 1) -> Tensor:
    """Bool [L, L] of key positions local to each query.

    Sequences: ``|q - k| <= radius``. Images (``grid`` patches per side after one CLS token):
    patches within ``radius`` rows and columns of each other; the CLS token is local to itself.
    """
    if grid is None:
        positions = torch.arange(length)
        return (positions[:, None] - positions[None, :]).abs() <= radius
    rows, cols = torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    window = torch.eye(length, dtype=torch.bool)
    window[1:, 1:] = near
    return window


@dataclass
class HeadPatterns:
    """Per-head statistics [layers, heads], averaged over real query tokens of the data.

    entropy: attention entropy over the keys, divided by log(number of keys): 0 = one key, 1 = uniform.
    diagonal: mass on the query itself. previous / next: mass on the token just before / after.
    first: mass on the first token (the CLS token where the model has one).
    column: mass on the one key that draws the most attention in each sample (the first token,
        a marker, a separator): a "vertical" stripe in the attention map.
    block: mass within the local window (see :func:`local_window`).
    """

    entropy: Tensor
    diagonal: Tensor
    previous: Tensor
    next: Tensor
    first: Tensor
    column: Tensor
    block: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return dict(vars(self))


class PatternMeter:
    """Accumulates :class:`HeadPatterns` over batches of attention maps."""

    def __init__(self, grid: int | None = None, radius: int = 1) -> None:
        self.grid, self.radius = grid, radius
        self.sums: dict[str, Tensor] = {}
        self.queries: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self, maps: list[Tensor], padding: Tensor | None) -> None:
        for layer, weights in enumerate(maps):
            weights = weights.float()
            B, H, L, _ = weights.shape
            pairs = valid_pairs(padding, B, L, weights.device)[:, None]  # [B, 1, L, L]
            real_query = pairs.any(-1)  # [B, 1, L]
            keys = pairs.sum(-1).clamp(min=2).float()  # [B, 1, L]
            p = weights * pairs
            offsets = torch.arange(L, device=weights.device)
            window = local_window(L, self.grid, self.radius).to(weights.device)
            per_query = {
                "entropy": -(p * p.clamp(min=1e-12).log()).sum(-1) / keys.log(),
                "diagonal": torch.diagonal(p, dim1=-2, dim2=-1),
                "previous": F.pad(torch.diagonal(p, offset=-1, dim1=-2, dim2=-1), (1, 0)),  # p[q, q - 1]
                "next": F.pad(torch.diagonal(p, offset=1, dim1=-2, dim2=-1), (0, 1)),  # p[q, q + 1]
                "first": p[..., 0],
                "block": (p * window).sum(-1),
            }
            counted = {
                "previous": real_query & (offsets >= 1),
                "next": real_query & (offsets < L - 1),
            }
            for name, values in per_query.items():
                mask = counted.get(name, real_query).expand(B, H, L)
                self._add(f"{layer}/{name}", (values * mask).sum(dim=(0, 2)), mask.sum(dim=(0, 2)))
            column = p.sum(-2) / real_query.sum(-1, keepdim=True).clamp(min=1)  # [B, H, L]: mean attention per key
            self._add(f"{layer}/column", column.amax(-1).sum(0), torch.full((H,), float(B)))

    def _add(self, key: str, total: Tensor, count: Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0) + total.cpu()
        self.queries[key] = self.queries.get(key, 0) + count.cpu().float()

    def compute(self, layout: HeadLayout) -> HeadPatterns:
        """Statistics [layers, original heads]; pruned heads are NaN."""
        if not self.sums:
            raise ValueError("no attention maps were measured")

        def stat(name: str) -> Tensor:
            return layout.scatter([self.sums[f"{i}/{name}"] / self.queries[f"{i}/{name}"].clamp(min=1) for i in range(layout.depth)])

        return HeadPatterns(**{name: stat(name) for name in ("entropy", "diagonal", "previous", "next", "first", "column", "block")})


@dataclass
class HeadLayout:
    """Which heads a transformer still has: ``kept[l]`` lists layer ``l``'s remaining heads by
    their original index; ``width`` is the number of heads per layer before any pruning."""

    kept: list[list[int]]
    width: int

    @classmethod
    def of(cls, encoder: torch.nn.Module) -> "HeadLayout":
        blocks = list(encoder.blocks)
        return cls([list(b.attn.kept_heads) for b in blocks], max(b.attn.original_heads for b in blocks))

    @property
    def depth(self) -> int:
        return len(self.kept)

    def names(self) -> list[str]:
        """``L<layer>H<head>`` of every remaining head, layer-major (original head indices)."""
        return [f"L{layer}H{head}" for layer, heads in enumerate(self.kept) for head in heads]

    def scatter(self, values: list[Tensor]) -> Tensor:
        """Per-layer values over remaining heads -> [layers, width], NaN where a head is pruned."""
        out = torch.full((self.depth, self.width), float("nan"))
        for layer, (heads, value) in enumerate(zip(self.kept, values)):
            out[layer, heads] = value.float().cpu()
        return out


def pattern_labels(patterns: HeadPatterns, threshold: float = 0.5) -> list[list[str]]:
    """Each head's dominant pattern, from its statistics.

    ``vertical`` (one key for every query: the first/CLS token, a marker), ``diagonal`` (itself)
    or ``positional`` (the previous or next token), whichever holds the most mass when that is
    at least ``threshold``; else ``block`` when the local window holds at least ``threshold``;
    else ``broad``.
    """
    labels = []
    for layer in range(patterns.entropy.shape[0]):
        row = []
        for head in range(patterns.entropy.shape[1]):
            if torch.isnan(patterns.entropy[layer, head]):
                row.append("pruned")
                continue
            candidates = {
                "vertical": float(patterns.column[layer, head]),
                "diagonal": float(patterns.diagonal[layer, head]),
                "positional": max(float(patterns.previous[layer, head]), float(patterns.next[layer, head])),
            }
            best = max(candidates, key=candidates.get)
            if candidates[best] >= threshold:
                row.append(best)
            elif float(patterns.block[layer, head]) >= threshold:
                row.append("block")
            else:
                row.append("broad")
        labels.append(row)
    return labels


class RedundancyMeter:
    """Mean cosine similarity between every two heads' attention maps (over real tokens).

    Two heads with similarity near 1 attend alike on every sample: one of them is redundant.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.samples = 0

    @torch.no_grad()
    def update(self, maps: list[Tensor], padding: Tensor | None) -> None:
        B, _, L, _ = maps[0].shape
        pairs = valid_pairs(padding, B, L, maps[0].device)[:, None]
        flat = torch.cat([(w.float() * pairs).flatten(2) for w in maps], dim=1)  # [B, heads, L*L]
        flat = F.normalize(flat, dim=-1)
        similarity = (flat @ flat.transpose(1, 2)).sum(0).cpu()
        self.total = similarity if self.total is None else self.total + similarity
        self.samples += B

    def compute(self) -> Tensor:
        """[all heads, all heads] in layer-major order."""
        if self.total is None:
            raise ValueError("no attention maps were measured")
        return self.total / self.samples
