"""Callbacks of every training run: exact resume, and what a non-finite loss does.

* :class:`RestoreRNG` (added by the modules themselves, through ``configure_callbacks``, so a
  run has it whatever ``callbacks=`` holds) saves the torch, CUDA, NumPy and Python RNG states in each checkpoint and
  restores them when fitting resumes. The restore happens while the checkpoint is loaded, before
  the training loader draws its seed (later would be too late): a resumed run continues
  bit-for-bit as if it had never stopped. Evaluating a checkpoint never rewinds the global RNG.
* :class:`NonFiniteLoss` applies ``nonfinite_loss`` (``mhc.api`` adds it to the trainer). The
  module leaves a batch whose loss is NaN or infinite without an update and reports it in
  ``MultiHeadModule.nonfinite``. ``stop`` then ends the run with one message naming the task and
  step; the checkpoints already written stay as they are. ``skip`` also undoes what the forward
  pass did to buffers (batch-norm statistics), counts the batch, and goes on. Without this
  callback the module stops.

  A finite loss can hide a diverged model (batch-norm statistics gone infinite, weights that
  overflowed), so the callback also checks the gradients, weights and buffers at every logged
  step (``trainer.log_every_n_steps``: one pass over the tensors, one device sync) and the
  state of every checkpoint before it is written: a non-finite value stops the run with one
  message naming the tensor, whatever the policy, and a checkpoint is never written from it.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from mhc.data.balance import prior_loss
from mhc.errors import ConfigError, NonFiniteLossError

NONFINITE_POLICIES = ("stop", "skip")


class RestoreRNG(pl.Callback):
    """The global RNG states in every checkpoint (``checkpoint["rng"]``), restored on resume."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if not rng or trainer.state.fn != "fit":
            return  # evaluating a checkpoint must not rewind the global RNG
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, state, gauss = rng["python"]
        random.setstate((version, tuple(state), gauss))


class NonFiniteLoss(pl.Callback):
    """``policy``: ``stop`` the run at a NaN or infinite training loss, or ``skip`` that batch."""

    def __init__(self, policy: str = "stop") -> None:
        if policy not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite_loss must be 'stop' or 'skip', got '{policy}'")
        self.policy = policy
        self.buffers: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.policy == "skip":  # what the forward pass may change: batch-norm statistics
            self.buffers = {k: v.clone() for k, v in pl_module.net.named_buffers()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        error: NonFiniteLossError | None = pl_module.nonfinite
        if error is None:
            if due(trainer):
                self.check(trainer, pl_module.named_parameters(), "weight")
                self.check(trainer, pl_module.net.named_buffers(prefix="net"), "buffer")
            return
        pl_module.nonfinite = None
        if self.policy == "stop":
            raise NonFiniteLossError(f"training stopped: {error}; {kept(trainer)} (nonfinite_loss=skip skips such batches)")
        pl_module.net.load_state_dict(self.buffers or {}, strict=False)
        pl_module.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(pl_module.skipped_steps), on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if due(trainer):
            self.check(trainer, ((name, p.grad) for name, p in pl_module.named_parameters()), "gradient")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]  # the weights and the network's buffers (a weighting method's may hold NaN: unset)
        names = [name for name, _ in (*pl_module.named_parameters(), *pl_module.net.named_buffers(prefix="net"))]
        self.check(trainer, ((name, state.get(name)) for name in names), "value",
                   " in the checkpoint about to be written (it was not)")

    @staticmethod
    def check(trainer: pl.Trainer, named: Iterable[tuple[str, Tensor | None]], what: str, where: str = "") -> None:
        name = first_nonfinite(named)
        if name is not None:
            raise NonFiniteLossError(f"training stopped: the {what} '{name}' is not finite (NaN or infinite) at step "
                                     f"{trainer.global_step} (epoch {trainer.current_epoch}){where}; the run diverged; "
                                     f"{kept(trainer)} (a smaller optimizer.lr or trainer.gradient_clip_val may help)")


def due(trainer: pl.Trainer) -> bool:
    """Whether this step is a logged one, where the state is checked."""
    return trainer.global_step % max(int(trainer.log_every_n_steps or 1), 1) == 0


def first_nonfinite(named: Iterable[tuple[str, Tensor | None]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity (one device sync)."""
    tensors = [(name, t) for name, t in named if t is not None and t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def kept(trainer: pl.Trainer) -> str:
    """What the run leaves: the folder of the checkpoints it wrote, or that it wrote none."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    if folder and Path(folder).is_dir() and any(Path(folder).glob("*.ckpt")):
        return f"the checkpoints in {folder} are kept"
    return "no checkpoint was written"


def base_rate_losses(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    """Each head's loss of predicting the training base rates (:func:`~mhc.data.balance.prior_loss`),
    for the heads without class or positive weights (whose loss is on another scale), from the
    training labels of the trainer's data; ``{}`` for data that cannot give them."""
    datamodule = trainer.datamodule
    tasks = [t for t in getattr(pl_module, "tasks", {}).values() if t.class_weights is None and t.pos_weight is None]
    if not tasks or not hasattr(datamodule, "train_labels"):
        return {}
    labels = datamodule.train_labels(tasks)
    return {task.name: prior_loss(task, labels[task.name]) for task in tasks}


class BadStart(pl.Callback):
    """A warning when a head's validation loss after the first epoch is far above the loss of
    predicting the training base rates (:func:`~mhc.data.balance.prior_loss`): ``factor`` times
    it, and at least ``margin`` above. Such a start almost always means the learning rate is too
    high for this data (or the warm-up too short); the run goes on. Heads with class or positive
    weights are left out (their loss is on another scale)."""

    def __init__(self, factor: float = 3.0, margin: float = 1.0) -> None:
        self.factor, self.margin = float(factor), float(margin)
        self.priors: dict[str, float] = {}
        self.checked = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.priors = base_rate_losses(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.checked or trainer.sanity_checking or not self.priors:
            return
        self.checked = True
        results = getattr(pl_module, "last_results", {}).get("val", {})
        far = {task: (results[task]["loss"], prior) for task, prior in self.priors.items()
               if "loss" in results.get(task, {}) and results[task]["loss"] > max(self.factor * prior, prior + self.margin)}
        if not far:
            return
        group = trainer.optimizers[0].param_groups[0] if trainer.optimizers else None
        lr = group.get("initial_lr", group["lr"]) if group else None  # before the schedule's warm-up
        heads = ", ".join(f"{task} {loss:.3g} (the training base rates give {prior:.3g})" for task, (loss, prior) in far.items())
        rate = f" (optimizer.lr={lr:g})" if lr is not None else ""
        rank_zero_warn(f"validation loss after the first epoch is far above predicting the base rates: {heads}; "
                       f"the learning rate{rate} is likely too high for this data: try a tenth of it "
                       "(optimizer.lr=...), or a longer warm-up (scheduler.warmup_fraction=0.1)")


class ShortRun(pl.Callback):
    """Little data, said once training starts. An epoch of fewer batches than
    ``trainer.log_every_n_steps`` lowers the interval to the epoch's batches, so the training loss
    is logged every epoch (Lightning would only warn). A network trained from scratch (no
    pretrained weights) in fewer than ``min_steps`` optimizer steps is a warning giving the
    ``trainer.max_epochs`` that reach ``advised_steps``."""

    def __init__(self, min_steps: int = 500, advised_steps: int = 2000) -> None:
        self.min_steps, self.advised_steps = int(min_steps), int(advised_steps)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        if 0 < batches < trainer.log_every_n_steps:  # inf (a loader without a length) is never below it
            trainer.log_every_n_steps = int(batches)
        steps = trainer.estimated_stepping_batches
        if trainer.max_steps != -1 or not 0 < steps < self.min_steps or not from_scratch(pl_module):
            return
        epochs = max(int(trainer.max_epochs or 1), 1)
        per_epoch = steps / epochs
        advised = math.ceil(self.advised_steps / per_epoch)
        rank_zero_warn(f"this run takes {int(steps)} optimizer steps ({epochs} epochs of {per_epoch:g}), few to train "
                       f"a network from scratch: trainer.max_epochs={advised} gives {self.advised_steps:,}, or "
                       "experiment=auto chooses the epochs, batch size and schedule from the data")


def from_scratch(pl_module: Any) -> bool:
    """Whether the backbone starts from random weights (no ``pretrained`` or ``weights`` option set)."""
    config = getattr(getattr(pl_module, "net", None), "backbone_config", None) or {}
    return not (config.get("pretrained") or config.get("weights"))
