"""Dashboard callbacks: per-head confusion matrices and, for transformer backbones, attention
maps, rollout and per-head attention entropy at the end of validation."""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from mhc.analysis import figures
from mhc.analysis.attention import HeadLayout, PatternMeter
from mhc.analysis.maps import patch_grid, sample_maps
from mhc.data.labels import batch_inputs
from mhc.model.backbones.base import ATTENTION
from mhc.tracking import log_figure, pyplot
from mhc.training.figures import confusion_figure, precision_recall_figure


def save_and_log(trainer: pl.Trainer, folder: str, figures: Mapping[str, Any], tag: str) -> None:
    """Rank 0 writes each head's figure to ``<log dir>/<folder>/<head>.png`` and logs it as
    ``val/<head>/<tag>``; the figures are closed."""
    out_dir = Path(trainer.log_dir or trainer.default_root_dir) / folder  # log_dir is a collective: every rank asks
    if not trainer.is_global_zero:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in figures.items():
        fig = draw()
        fig.savefig(out_dir / f"{name}.png", dpi=90)
        log_figure(trainer.loggers, f"val/{name}/{tag}", fig, trainer.global_step)
        pyplot().close(fig)


class FigureLogger(pl.Callback):
    """When a validation draws its figures, for the dashboard callbacks below.

    A figure costs about a third of a second to draw and save, more than a whole epoch of a
    small run; drawn at every validation, figures took most of such a run's time. So during fit
    a validation draws when it is the first, or while the figures drawn so far took at most
    ``time_share`` of the time since fit started (``1``: every validation); validations outside
    fit (``trainer.validate``, which :func:`mhc.train` runs on the best checkpoint) always draw.
    ``every_n_epochs`` thins them further. Rank 0's clock decides for every process, since some
    figures need a synchronised compute.
    """

    def __init__(self, every_n_epochs: int = 1, time_share: float = 0.1) -> None:
        if every_n_epochs < 1 or not 0.0 <= time_share <= 1.0:
            raise ValueError(f"{type(self).__name__}: every_n_epochs must be >= 1 and time_share within [0, 1], "
                             f"got {every_n_epochs} and {time_share}")
        self.every_n_epochs, self.time_share = every_n_epochs, time_share
        self.started: float | None = None
        self.spent = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started, self.spent = time.perf_counter(), 0.0

    def due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING or self.started is None:
            return True
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return False
        within = self.spent <= self.time_share * (time.perf_counter() - self.started)
        return bool(trainer.strategy.broadcast(within, src=0))

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """Counts the time of the block against the budget."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - start


class ConfusionMatrixLogger(FigureLogger):
    """Logs each head's validation confusion matrix (at the heads' decision thresholds): as an
    image to TensorBoard / wandb, and as PNG files under ``<log dir>/confusion/`` (so CSV-only
    runs get them too); when, :class:`FigureLogger` says."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        with self.drawing():  # every process takes part in the synchronised compute; only rank 0 draws
            matrices = pl_module.stage_metrics("val").confusion_matrices(pl_module.labelled_counts("val"))
            save_and_log(trainer, "confusion", {name: partial(confusion_figure, pl_module.tasks[name], matrix)
                                                for name, matrix in matrices.items()}, "confusion")


class PrecisionRecallLogger(FigureLogger):
    """Logs each multilabel head's validation precision-recall curves, one line per class (from
    the binned AUROC state), like :class:`ConfusionMatrixLogger`: images and ``<log dir>/pr_curves/*.png``."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        with self.drawing():
            curves = pl_module.stage_metrics("val").precision_recall_curves(pl_module.labelled_counts("val"))
            save_and_log(trainer, "pr_curves", {name: partial(precision_recall_figure, pl_module.tasks[name], *curve)
                                                for name, curve in curves.items()}, "pr_curve")


class AttentionMapLogger(FigureLogger):
    """For a transformer backbone (``vit_*``, ``seq_*``), at the end of validation: the attention
    maps (layers by heads) and the attention rollout of the first ``samples`` validation samples,
    as images; and each head's attention entropy over the first ``probe`` validation samples, as
    scalars ``attention/L<layer>H<head>/entropy`` (0: one key, 1: uniform), so a head that
    collapses or stays uniform shows as a curve. PNGs go to ``<log dir>/attention/`` as well.
    Does nothing for a CNN backbone. The scalars come at every validation, the images when
    :class:`FigureLogger` says.
    """

    def __init__(self, samples: int = 2, probe: int = 64, every_n_epochs: int = 1, time_share: float = 0.1) -> None:
        super().__init__(every_n_epochs, time_share)
        self.samples, self.probe = samples, probe
        self.inputs: torch.Tensor | None = None

    @staticmethod
    def applies(pl_module: pl.LightningModule) -> bool:
        return pl_module.net.backbone.supports(ATTENTION)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Mapping[str, Any],
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if self.inputs is None and batch_idx == 0 and trainer.is_global_zero and self.applies(pl_module):
            self.inputs = batch_inputs(batch)[: max(self.samples, self.probe)].detach().clone()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.applies(pl_module):
            return
        draw = self.due(trainer)  # the entropy scalars are cheap: logged at every validation
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "attention"  # log_dir is a collective: every rank
        if self.inputs is None or not trainer.is_global_zero:
            return
        net, step = pl_module.net, trainer.global_step
        layout = HeadLayout.of(net.backbone.encoder)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                maps, padding = net.attention(self.inputs)
            meter = PatternMeter(grid=patch_grid(net, self.inputs))
            meter.update(maps, padding)
            entropy = meter.compute(layout).entropy
            scalars = {f"attention/L{layer}H{head}/entropy": float(entropy[layer, head])
                       for layer, heads in enumerate(layout.kept) for head in heads}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
            if draw:
                with self.drawing():  # the sample maps are computed for the figures alone: they count too
                    self.draw(sample_maps(net, self.inputs[: self.samples]), layout, out_dir, trainer.loggers, step)
        finally:
            net.train(was_training)

    @staticmethod
    def draw(shown: list[dict[str, Any]], layout: HeadLayout, out_dir: Path, loggers: list[Any], step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        head_names = [[f"L{layer}H{head}" for head in kept] for layer, kept in enumerate(layout.kept)]
        drawn = [(f"sample{i}", figures.attention_maps_figure(s["maps"], s["labels"], head_names, f"attention maps, sample {i}, step {step}"))
                 for i, s in enumerate(shown)]
        if shown:
            images = [s["image"] for s in shown] if "image" in shown[0] else None
            drawn.append(("rollout", figures.rollout_figure([s["rollout"] for s in shown], [s["labels"] for s in shown], images)))
        for stem, fig in drawn:
            fig.savefig(out_dir / f"{stem}.png", dpi=90)
            log_figure(loggers, f"val/attention/{stem}", fig, step)
            figures.close(fig)
