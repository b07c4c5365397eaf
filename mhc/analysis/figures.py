"""Matplotlib figures of the attention analysis; each function returns a figure to save or log."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from torch import Tensor

from mhc.analysis.pruning import CurvePoint
from mhc.tracking import pyplot

TICK_LIMIT = 40  # label every token on the axes of maps up to this length


def _ticks(ax: Any, labels: Sequence[str]) -> None:
    if len(labels) > TICK_LIMIT:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
    ax.set_yticks(range(len(labels)), labels, fontsize=5)


def attention_maps_figure(maps: Sequence[Tensor], labels: Sequence[str], head_names: Sequence[Sequence[str]], title: str) -> Any:
    """One sample's attention: a grid of layers (rows) by heads (columns), keys on x, queries on y.

    maps[l]: [H_l, L, L] for this sample, cropped to its real tokens; ``labels`` name the tokens.
    """
    plt = pyplot()
    rows, cols = len(maps), max(m.shape[0] for m in maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.5, 2.3 * rows + 0.6), squeeze=False)
    for layer, weights in enumerate(maps):
        for head in range(cols):
            ax = axes[layer, head]
            if head >= weights.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(weights[head].cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            _ticks(ax, labels)
            ax.set_title(head_names[layer][head], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def rollout_figure(rollouts: Sequence[Tensor], labels: Sequence[Sequence[str]], images: Sequence[Tensor] | None = None) -> Any:
    """Attention rollout per sample ([L, L], queries on y). For images, a second row shows the
    CLS token's rollout over the patch grid next to the image."""
    plt = pyplot()
    n = len(rollouts)
    rows = 2 if images is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(3.0 * n + 0.5, 3.0 * rows + 0.4), squeeze=False)
    for i, (rollout, names) in enumerate(zip(rollouts, labels)):
        ax = axes[0, i]
        ax.imshow(rollout.cpu().numpy(), cmap="magma")
        _ticks(ax, names)
        ax.set_title(f"sample {i}: rollout", fontsize=8)
        if images is not None:
            side = round((rollout.shape[-1] - 1) ** 0.5)
            cls = rollout[0, 1:].reshape(side, side).cpu().numpy()
            image = images[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
            ax = axes[1, i]
            ax.imshow(image)
            ax.imshow(cls, cmap="magma", alpha=0.55, extent=(0, image.shape[1], image.shape[0], 0), interpolation="nearest")
            ax.set_title("CLS rollout over patches", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def head_grid_figure(
    values: Mapping[str, Tensor], title: str, cmap: str = "viridis", annotate: bool = True, limits: tuple[float, float] | None = None
) -> Any:
    """One layer-by-head heatmap per entry of ``values`` ([layers, heads]; NaN = pruned, grey),
    on a shared colour scale ``limits`` if given, else each on its own."""
    plt = pyplot()
    n = len(values)
    first = next(iter(values.values()))
    fig, axes = plt.subplots(1, n, figsize=(0.55 * first.shape[1] * n + 1.6 * n, 0.45 * first.shape[0] + 1.6), squeeze=False)
    for ax, (name, grid) in zip(axes[0], values.items()):
        data = np.ma.masked_invalid(grid.float().cpu().numpy())
        vmin, vmax = limits or (None, None)
        image = ax.imshow(data, cmap=plt.get_cmap(cmap).with_extremes(bad="lightgrey"), aspect="auto", vmin=vmin, vmax=vmax)
        if annotate:
            low, high = image.get_clim()
            for (layer, head), value in np.ndenumerate(grid.cpu().numpy()):
                if not np.isnan(value):  # dark text on the bright end of the colour map
                    bright = (value - low) / max(high - low, 1e-12) > 0.6
                    ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if bright else "white")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def redundancy_figure(similarity: Tensor, names: Sequence[str]) -> Any:
    """Cosine similarity of every two heads' attention maps."""
    plt = pyplot()
    size = 0.28 * len(names) + 2.0
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(similarity.cpu().numpy(), cmap="coolwarm", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_title("head redundancy: cosine similarity of attention maps", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def pruning_curve_figure(points: Sequence[CurvePoint]) -> Any:
    """Accuracy against the fraction of heads pruned, per task and mean: importance order (line)
    against random orders (mean line, min-max band)."""
    plt = pyplot()
    tasks = list(points[0].accuracy)
    panels = [*tasks, "mean"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 2.8), squeeze=False, sharey=True)

    def value(point: CurvePoint, panel: str) -> float:
        return point.mean_accuracy if panel == "mean" else point.accuracy.get(panel, float("nan"))

    fractions = sorted({p.fraction for p in points})
    for ax, panel in zip(axes[0], panels):
        ranked = sorted((p for p in points if p.strategy == "importance"), key=lambda p: p.fraction)
        ax.plot([p.fraction for p in ranked], [value(p, panel) for p in ranked], "o-", color="tab:blue", label="importance")
        random_values = [[value(p, panel) for p in points if p.strategy == "random" and p.fraction == f] for f in fractions]
        if all(random_values):
            ax.plot(fractions, [np.mean(v) for v in random_values], "s--", color="tab:orange", label="random (mean)")
            ax.fill_between(fractions, [min(v) for v in random_values], [max(v) for v in random_values], color="tab:orange", alpha=0.2)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("fraction of heads pruned")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def close(fig: Any) -> None:
    pyplot().close(fig)

