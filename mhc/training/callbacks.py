"""Callbacks: per-head confusion matrices as images at the end of validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from mhc.tasks import TaskSpec
from mhc.tracking import log_figure, pyplot


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


class ConfusionMatrixLogger(pl.Callback):
    """Logs each head's validation confusion matrix: as an image to TensorBoard / wandb, and as
    PNG files under ``<log dir>/confusion/`` (so CSV-only runs get them too)."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # Every process takes part in the synchronised compute; only rank 0 draws.
        matrices = pl_module.stage_metrics("val").confusion_matrices(pl_module.labelled_counts("val"))
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "confusion"  # log_dir is a collective
        if not trainer.is_global_zero:
            return
        plt = pyplot()
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, matrix in matrices.items():
            fig = confusion_figure(pl_module.tasks[name], matrix)
            fig.savefig(out_dir / f"{name}.png", dpi=90)
            log_figure(trainer.loggers, f"val/{name}/confusion", fig, trainer.global_step)
            plt.close(fig)
