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
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

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
            return
        pl_module.nonfinite = None
        if self.policy == "stop":
            folder = getattr(trainer.checkpoint_callback, "dirpath", None)
            kept = f"; the checkpoints in {folder} are kept" if folder else ""
            raise NonFiniteLossError(f"training stopped: {error}{kept} (nonfinite_loss=skip skips such batches)")
        pl_module.net.load_state_dict(self.buffers or {}, strict=False)
        pl_module.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(pl_module.skipped_steps), on_step=True, on_epoch=False)
