"""The LightningModule that pretrains a backbone with a masked-modeling objective.

It holds a :class:`~mhc.model.MultiHeadNet` without heads (for its backbone and input
preprocessing) and an objective wrapping that backbone; labels in the batches are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhc.data.labels import batch_inputs
from mhc.model.net import MultiHeadNet
from mhc.pretrain.base import PretrainOutput, build_objective, objective_for
from mhc.tracking import log_figure, pyplot
from mhc.training.schedules import optimization

DISPLAYED = 6  # validation samples whose reconstructions are drawn


class PretrainModule(pl.LightningModule):
    """Pretrains ``net_config``'s backbone with ``objective`` (a registered name or ``auto``).

    Args:
        net_config: ``MultiHeadNet.config()``-style plain data; its tasks are ignored.
        objective_options: see :func:`build_objective`.
    """

    def __init__(
        self,
        net_config: Mapping[str, Any],
        objective: str = "auto",
        objective_options: Mapping[str, Any] | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"net_config": dict(net_config), "objective": objective,
                                   "objective_options": dict(objective_options or {})})
        self.net = MultiHeadNet.from_config({**net_config, "tasks": []})
        self.objective_name = objective_for(self.net.backbone, objective)
        self.objective = build_objective(self.net, objective, objective_options)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.displayed: Tensor | None = None

    def forward(self, inputs: Tensor) -> PretrainOutput:
        return self.objective(self.net.backbone_input(inputs))

    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        inputs = batch_inputs(batch)
        out = self(inputs)
        self.log(f"{stage}/loss", out.loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=len(inputs), sync_dist=stage != "train")
        self.log(f"{stage}/masked_fraction", out.mask.float().mean(), on_step=False, on_epoch=True,
                 batch_size=len(inputs), sync_dist=stage != "train")
        return out.loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if batch_idx == 0 and self.displayed is None:
            self.displayed = batch_inputs(batch)[:DISPLAYED].detach()
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not hasattr(self.objective, "reconstruction"):
            return
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "reconstructions"  # a collective: every rank
        if self.displayed is None or not self.trainer.is_global_zero:
            return
        figure = self.reconstruction_figure(self.displayed)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"epoch{self.current_epoch:03d}.png", dpi=90)
        log_figure(self.trainer.loggers, "val/reconstructions", figure, self.global_step)
        pyplot().close(figure)

    @torch.no_grad()
    def reconstruction_figure(self, images: Tensor) -> Any:
        """Rows of original / masked / reconstructed images, in [0, 1] display space."""
        was_training = self.training
        self.eval()
        try:
            inputs = self.net.backbone_input(images)
            triple = self.objective.reconstruction(inputs, self.objective(inputs))
        finally:
            self.train(was_training)
        mean, std = self.net.mean, self.net.std
        plt = pyplot()
        fig, axes = plt.subplots(3, len(images), figsize=(1.6 * len(images), 5.0), squeeze=False)
        for row, (title, batch) in enumerate(zip(("original", "masked", "reconstructed"), triple)):
            shown = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            for col, image in enumerate(shown):
                axes[row, col].imshow(image)
                axes[row, col].axis("off")
            axes[row, 0].set_title(title, fontsize=8, loc="left")
        fig.tight_layout()
        return fig

    def configure_optimizers(self) -> Any:
        return optimization(self, self.optimizer_factory, self.scheduler_factory)
