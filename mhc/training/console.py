"""What a run shows on the console: one line per epoch where no progress bar can draw, and none
of the dependencies' advertisements or deprecation notices about their own internals.

* :class:`EpochSummary` (``callbacks.epoch_summary``): after each validation, one line with the
  epoch, the validation loss and mean metrics and each head's F1, through the ``mhc``
  logger. ``when: auto`` writes it only when the console is not a terminal (a log file, a batch
  job's output), where Rich's progress bar shows nothing per epoch.
* :func:`quiet_dependencies`: Lightning's tips advertising its cloud products, and warnings that
  name a dependency's internal use of another's deprecated API (nothing a user can act on),
  are left out. Everything else passes.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import pytorch_lightning as pl

from mhc.errors import ConfigError

log = logging.getLogger("mhc")
WHEN = ("auto", "always", "never")
# Warnings about a dependency's own use of another's API, emitted inside the dependency.
DEPENDENCY_NOTICES = (r".*isinstance\(treespec, LeafSpec\)` is deprecated",
                      # mhc.training.guards.ShortRun lowers the interval to the epoch's batches instead
                      r"The number of training batches .* is smaller than the logging interval")
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class DropTips(logging.Filter):
    """Drops Lightning's product tips (``💡 Tip: ... try installing litlogger``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_dependencies() -> None:
    """Leave the dependencies' tips and notices about their own internals out of the console (once)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    for message in DEPENDENCY_NOTICES:
        warnings.filterwarnings("ignore", message=message)


class EpochSummary(pl.Callback):
    """One line per validated epoch: ``epoch 3/10: val/loss 0.4120, val/mean/f1 0.7210, ... | f1 shape
    0.800, size 0.640, ...``. ``when``: ``auto`` (only when stderr is not a terminal), ``always``, ``never``."""

    def __init__(self, when: str = "auto", metric: str = "f1") -> None:
        if when not in WHEN:
            raise ConfigError(f"callbacks.epoch_summary.when must be one of {list(WHEN)}, got {when!r}")
        self.when, self.metric = when, metric

    def active(self) -> bool:
        return self.when == "always" or (self.when == "auto" and not sys.stderr.isatty())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # after the module logged
        if trainer.state.fn != "fit" or trainer.sanity_checking or not trainer.is_global_zero or not self.active():
            return
        log.info(summary_line(trainer, pl_module, self.metric))


def summary_line(trainer: pl.Trainer, pl_module: Any, metric: str) -> str:
    """The epoch, the validation loss and mean metrics, and each head's ``metric``."""
    logged = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    means = [key for key in ("val/loss", "val/mean/f1", "val/mean/acc", "val/delta_m") if key in logged]
    heads = pl_module.last_results.get("val", {})
    per_head = ", ".join(f"{task} {values[metric]:.3f}" for task, values in heads.items() if metric in values)
    total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    line = f"epoch {trainer.current_epoch + 1}{total}: " + ", ".join(f"{key} {logged[key]:.4f}" for key in means)
    return line + (f" | {metric} {per_head}" if per_head else "")
