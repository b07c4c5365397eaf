"""Weight averaging kept where it helps: an exponential moving average of the weights (EMA) or
their equal-weight average (SWA), validated beside the current weights at every validation.

Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` keeps the average and always
validates and saves it. :class:`WeightAverage` validates both: ``val_current/*`` and
``val_average/*`` are logged, and with ``keep="better"`` the weights that score better on
``monitor`` are the ones ``val/*`` describes, the checkpoints hold (their ``state_dict``, what
``mhc.load``, export and checkpoint selection see) and training ends with. The other weights
travel in the checkpoint too, so ``resume=`` continues both exactly. ``val/loss`` is the current
weights' (it is logged batch by batch); ``val/<task>/loss`` follow the kept weights.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from mhc.errors import ConfigError

KEEP = ("better", "average")
MultiAverage = Callable[[Sequence[Tensor], Sequence[Tensor], Tensor], None]


def average_update(decay: float | None, warmup: bool = True) -> MultiAverage:
    """``average += r * (current - average)`` for floating tensors (others, such as counters and
    masks, are copied). SWA (``decay=None``): ``r = 1 / (n + 1)`` after ``n`` updates, the
    equal-weight mean. EMA: ``r = 1 - decay`` or, with ``warmup``, ``1 - min(decay, (1 + n) / (10 + n))``
    (TensorFlow's ``ExponentialMovingAverage(num_updates=)``), so early averages do not carry the
    initial weights for a whole horizon."""

    def update(averaged: Sequence[Tensor], current: Sequence[Tensor], count: Tensor) -> None:
        if not averaged[0].is_floating_point():
            for average, value in zip(averaged, current):
                average.copy_(value)
            return
        if decay is None:
            rate = 1.0 / (count + 1)
        else:
            rate = 1.0 - (torch.clamp((1 + count) / (10 + count), max=decay) if warmup else torch.as_tensor(decay))
        torch._foreach_lerp_(list(averaged), list(current), rate.to(averaged[0].dtype))

    return update


class WeightAverage(WeightAveraging):
    """EMA (``decay``) or SWA (``decay=None``: the equal-weight mean of the weights after each
    optimizer step from ``start`` on) of every parameter and buffer, validated beside the current
    weights.

    Args:
        decay: the EMA decay in [0, 1); ``None`` for SWA.
        warmup: EMA only: a lower decay over the first updates (see :func:`ema_update`).
        start: the fraction of training's optimizer steps taken before averaging begins, in [0, 1).
        every_n_steps: update the average every this many optimizer steps.
        keep: ``better`` (whichever weights score better on ``monitor`` at each validation;
            the current ones on a tie or before the first update) or ``average`` (always the
            average, as Lightning's callback).
        monitor, mode: the validation metric that decides (``val/<task>/<metric>``,
            ``val/mean/<metric>``, ``val/delta_m``) and whether higher (``max``) or lower is better;
            the packaged configs take the checkpoint's.
        use_buffers: average buffers (batch-norm statistics) too, rather than copying them.
    """

    def __init__(self, decay: float | None = 0.999, warmup: bool = True, start: float = 0.0, every_n_steps: int = 1,
                 keep: str = "better", monitor: str = "val/mean/f1", mode: str = "max", use_buffers: bool = True) -> None:
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ConfigError(f"weight averaging: decay must be in [0, 1) (or null for SWA), got {decay!r}")
        if not 0.0 <= start < 1.0:
            raise ConfigError(f"weight averaging: start must be a fraction of the steps in [0, 1), got {start!r}")
        if not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ConfigError(f"weight averaging: every_n_steps must be a positive integer, got {every_n_steps!r}")
        if keep not in KEEP:
            raise ConfigError(f"weight averaging: keep must be one of {', '.join(KEEP)}, got {keep!r}")
        if mode not in ("max", "min"):
            raise ConfigError(f"weight averaging: mode must be 'max' or 'min', got {mode!r}")
        super().__init__(use_buffers=use_buffers, multi_avg_fn=average_update(decay, warmup))
        self.start, self.every_n_steps, self.keep, self.monitor, self.mode = start, every_n_steps, keep, monitor, mode
        self.start_step = 0
        self.average_kept = keep == "average"  # which weights the module reports, saves and ends with

    # -- when to update -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start:
            total = trainer.estimated_stepping_batches
            if total == float("inf"):
                raise ConfigError("weight averaging: start is a fraction of the optimizer steps, which an unbounded run "
                                  "(trainer.max_epochs=-1, no max_steps) does not have; set start=0")
            self.start_step = int(self.start * total)
        if self._average_model is not None:  # beside the module, so the two can exchange metrics
            self._average_model.to(pl_module.device)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step and (step_idx - self.start_step) % self.every_n_steps == 0

    @property
    def averaged(self) -> bool:
        """Whether the average holds anything yet (an update has happened)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    # -- validation: both weights ---------------------------------------------------------------
    def _validating_both(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self.averaged

    def _copy(self) -> pl.LightningModule:
        assert self._average_model is not None
        return self._average_model.module

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validating_both(trainer):  # the current weights are validated as always; the copy beside them
            self._copy().eval()
            self._copy().stage_metrics("val").reset()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._validating_both(trainer):
            if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
                self.average_kept = False  # nothing averaged yet
            return
        copy = self._copy()
        counts = pl_module.labelled_counts("val")  # the same batches: summed over processes once
        _, current = pl_module.epoch_scores("val", counts)
        _, average = copy.epoch_scores("val", counts)
        if self.monitor not in current:
            raise ConfigError(f"weight averaging: monitor '{self.monitor}' is not a validation metric; "
                              f"one of {', '.join(sorted(current))}")
        better = average[self.monitor] > current[self.monitor] if self.mode == "max" else \
            average[self.monitor] < current[self.monitor]
        self.average_kept = self.keep == "average" or better
        pl_module.log_dict({key.replace("val/", "val_current/", 1): value for key, value in current.items()})
        pl_module.log_dict({key.replace("val/", "val_average/", 1): value for key, value in average.items()})
        if self.average_kept:  # the module reports (and what runs after it draws from) the kept weights' metrics
            pl_module.metrics["val_"], copy.metrics["val_"] = copy.metrics["val_"], pl_module.metrics["val_"]

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._validating_both(trainer):
            with torch.no_grad(), trainer.precision_plugin.val_step_context():  # as validation_step runs
                self._copy().measure(batch, "val")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average_kept and self.averaged:
            self._copy_average_to_current(pl_module)

    # -- checkpoints: the kept weights in state_dict, the others beside them ----------------------
    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "average_kept": self.average_kept}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        self.average_kept = bool(state_dict.get("average_kept", self.keep == "average"))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        state = self._average_model.state_dict()
        average = {name[len("module."):]: value for name, value in state.items() if name.startswith("module.")}
        checkpoint["averaging_state"] = {name: value for name, value in state.items() if not name.startswith("module.")}
        if self.average_kept and self.averaged:
            checkpoint["current_model_state"], checkpoint["state_dict"] = checkpoint["state_dict"], average
        else:
            checkpoint["average_model_state"] = average

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING or self._average_model is None or "averaging_state" not in checkpoint:
            return  # validation, test or prediction from the checkpoint: its state_dict is what was kept
        if "current_model_state" in checkpoint:  # the average was kept: state_dict holds it
            average = checkpoint["state_dict"]
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            average = checkpoint["average_model_state"]
        self._average_model.load_state_dict({f"module.{k}": v for k, v in average.items()} | checkpoint["averaging_state"])


def reported_module(trainer: pl.Trainer, pl_module: pl.LightningModule) -> pl.LightningModule:
    """The module whose weights this validation's ``val/*`` metrics describe: the average kept by
    a :class:`WeightAverage` callback, else ``pl_module`` itself."""
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAverage) and callback.average_kept and callback.averaged:
            return callback._copy()
    return pl_module
