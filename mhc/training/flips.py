"""Horizontal flips turned on only where validation says they keep every head's meaning
(``augment.hflip_check=true``; ``experiment=auto`` sets it).

A mirror image can mean something else: the left and the right digit of a two-digit image, an
arrow, text, a hand's side. A task can say so (``tasks.<name>.hflip``); where nothing is
declared, :class:`FlipCheck` asks the data. Training starts without flips. At the first
validation every head whose flip rule is ``invariant`` is scored (its loss) on the validation
images and on their mirror images. A head that has learned something (its loss at least
``learned`` of the way from the loss of the training base rates to zero) and keeps less than
``keep`` of that gain on the mirror images is one a flip would teach the wrong answer: flips
stay off for the run, and so does flip TTA on its test; one line names the heads. Otherwise
flips are on, at ``augment.hflip``, from then on. While no head has learned anything the check
waits for the next validation. The decision is saved in checkpoints, so a resumed run keeps it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from mhc.training.guards import base_rate_losses

log = logging.getLogger(__name__)


class FlipCheck(pl.Callback):
    """See the module docstring. ``flips``: ``None`` until decided, then whether flips are on."""

    def __init__(self, keep: float = 0.5, learned: float = 0.1) -> None:
        self.keep, self.learned = float(keep), float(learned)
        self.flips: bool | None = None
        self.probability: float | None = None  # the configured augment.hflip
        self.priors: dict[str, float] = {}
        self.sums: torch.Tensor | None = None  # per checked head: loss sums plain and mirrored, labelled count

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        augmentation = pl_module.augmentation
        if self.probability is None:
            self.probability = float(augmentation.hflip)
        augmentation.hflip = self.probability if self.flips else 0.0
        invariant = {name for name, task in pl_module.tasks.items() if task.hflip == "invariant"}
        self.priors = {task: prior for task, prior in base_rate_losses(trainer, pl_module).items()
                       if task in invariant and prior > 0}
        if not self.priors and self.flips is None:
            self.decide(pl_module, True, "every task declares its flip rule" if not invariant else
                        f"no head to judge by ({', '.join(sorted(invariant))}: class or positive weights)")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.flips is not None or trainer.sanity_checking or not self.priors or "image" not in batch:
            return
        rows = []
        with torch.no_grad():  # both views through this net (a weight average may validate its own copy)
            plain, mirrored = (pl_module.step.losses(pl_module.net, pl_module.net(images), batch)
                               for images in (batch["image"], batch["image"].flip(-1)))
        for task in self.priors:
            count = batch["label_mask"][task].sum().float()
            rows.append(torch.stack([plain[task].float() * count, mirrored[task].float() * count, count])
                        if count > 0 else torch.zeros(3, device=count.device))
        sums = torch.stack(rows)
        self.sums = sums if self.sums is None else self.sums + sums

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.flips is not None or self.sums is None:
            return
        sums = trainer.strategy.reduce(self.sums, reduce_op="sum").cpu()
        self.sums = None
        learned, hurt = [], []
        for (task, prior), (plain, mirrored, count) in zip(self.priors.items(), sums.tolist()):
            if count == 0:
                continue
            gain = prior - plain / count
            if gain < self.learned * prior:
                continue
            learned.append(task)
            kept = (prior - mirrored / count) / gain
            if kept < self.keep:
                hurt.append(f"{task} keeps {max(kept, 0.0):.0%} of its gain over the base rates on mirror images")
        if not learned:
            return  # nothing to judge by yet: the next validation decides
        if hurt:
            self.decide(pl_module, False, "; ".join(hurt))
        else:
            self.decide(pl_module, True, f"{', '.join(learned)} score the same on mirror images")

    def decide(self, pl_module: pl.LightningModule, flips: bool, why: str) -> None:
        self.flips = flips
        pl_module.augmentation.hflip = self.probability if flips else 0.0
        if flips:
            log.info("augment.hflip_check: flips on from now (augment.hflip=%g): %s", self.probability, why)
        else:
            log.warning("augment.hflip_check: no flips in this run, nor flip TTA: %s; declare a task's rule with "
                        "tasks.<name>.hflip (README), or set augment.hflip_check=false to flip anyway", why)

    def tta(self, tta: str | None) -> str | None:
        """``tta`` for the run's test: no flip views where flips were left off."""
        return tta if self.flips or tta != "flip" else None

    def state_dict(self) -> dict[str, Any]:
        return {"flips": self.flips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.flips = state_dict.get("flips")
