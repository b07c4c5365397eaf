"""Figures of the decisions a model makes: confusion matrices, precision-recall curves,
reliability diagrams and coverage curves. Each function returns a matplotlib figure to save or log."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from mhc.tasks import TaskSpec
from mhc.tracking import pyplot

PANEL_LIMIT = 12  # panels drawn per figure: the first this many classes of a wide multilabel head


def confusion_figure(task: TaskSpec, matrix: torch.Tensor):
    """A matplotlib figure of one head's confusion matrix (one panel per label for multilabel)."""
    plt = pyplot()
    panels = matrix.reshape(-1, *matrix.shape[-2:]).cpu().numpy()
    names = task.classes if task.kind == "multilabel" else [task.name]
    ticks = ["no", "yes"] if task.kind == "multilabel" else task.classes
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 + 2.4 * len(panels), 3.2), squeeze=False)
    for ax, panel, title in zip(axes[0], panels, names):
        ax.imshow(panel, cmap="Blues")
        for (i, j), value in np.ndenumerate(panel):
            ax.text(j, i, int(value), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def precision_recall_figure(task: TaskSpec, precision: torch.Tensor, recall: torch.Tensor) -> Any:
    """A binary or multilabel head's precision-recall curves [outputs, K], one line per class (the
    first :data:`PANEL_LIMIT` of a wide head)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    names = task.classes if task.kind == "multilabel" else [task.classes[1]]
    for name, p, r in list(zip(names, precision.cpu().numpy(), recall.cpu().numpy()))[:PANEL_LIMIT]:
        ax.plot(r, p, label=name, linewidth=1.2)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{task.name}: precision-recall", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def reliability_figure(report: Mapping[str, Mapping[str, Any]]) -> Any:
    """One reliability diagram per head from a calibration report (:func:`mhc.calibration.calibration_report`):
    the frequency of the event against the predicted confidence, before and after calibration,
    beside the diagonal a calibrated model follows."""
    plt = pyplot()
    names = [name for name, entry in report.items() if "reliability" in entry][:PANEL_LIMIT]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(0.4 + 2.9 * max(1, len(names)), 3.1), squeeze=False)
    for ax, name in zip(axes[0], names):
        entry = report[name]
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
        for when, style in (("before", "o--"), ("after", "s-")):
            points = entry["reliability"][when]
            ece = entry[when].get("ece")
            label = f"{when} (ECE {ece:.3f})" if isinstance(ece, float) and np.isfinite(ece) else when
            ax.plot(points["confidence"], points["accuracy"], style, markersize=3, linewidth=1.2, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    axes[0, 0].set_ylabel("observed frequency")
    fig.tight_layout()
    return fig


def coverage_figure(report: Mapping[str, Mapping[str, Any]]) -> Any:
    """Accuracy against coverage per multiclass or binary head: how right each head is on the
    samples it still decides when it abstains under a confidence."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    for name, entry in list(report.items())[:PANEL_LIMIT]:
        if "coverage" in entry:
            ax.plot(entry["coverage"]["coverage"], entry["coverage"]["accuracy"], "o-", markersize=2.5, label=name)
    ax.set_xlabel("coverage (share of samples decided)")
    ax.set_ylabel("accuracy on them")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


CALIBRATION_FIGURES = {"reliability": reliability_figure, "coverage": coverage_figure}  # a calibration report's
