"""Per-head model selection and early stopping.

A multi-task run keeps the checkpoint of the best *mean* validation epoch, but heads peak at
different epochs. :class:`HeadSelection` keeps, for each head, its weights from its own best
validation epoch; after fitting, :func:`swap_in_best_heads` puts them on the best checkpoint's
shared backbone and keeps each one only where validation says it helps (a head trained against
an earlier backbone may not fit the later one). :class:`HeadEarlyStopping` stops a run once
every head has gone ``patience`` validations (its own, when given per head) without improving.

Both follow each head's ``val/<task>/<metric>`` (``mode`` max, or min for ``loss``) and keep their
state in checkpoints, so ``resume=`` continues them exactly.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor

from mhc.errors import ConfigError
from mhc.metrics import LOWER_IS_BETTER
from mhc.training.averaging import reported_module

log = logging.getLogger(__name__)
MODES = ("max", "min")


class HeadTracker:
    """Each head's best value of one validation metric so far, and the validation count at which
    it was reached."""

    def __init__(self, metric: str = "acc", mode: str | None = None, min_delta: float = 0.0) -> None:
        mode = mode or ("min" if metric in LOWER_IS_BETTER else "max")
        if mode not in MODES:
            raise ConfigError(f"mode: expected max or min, got '{mode}'")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        self.metric, self.mode, self.min_delta = metric, mode, float(min_delta)
        self.best: dict[str, float] = {}
        self.epoch: dict[str, int] = {}

    def better(self, value: float, than: float | None, min_delta: float = 0.0) -> bool:
        if than is None:
            return True
        return value > than + min_delta if self.mode == "max" else value < than - min_delta

    def update(self, results: Mapping[str, Mapping[str, float]], epoch: int) -> list[str]:
        """Record a validation's per-head ``results``; the heads that improved."""
        improved = []
        for task, values in results.items():
            if self.metric not in values:
                continue
            value = float(values[self.metric])
            if self.better(value, self.best.get(task), self.min_delta):
                self.best[task], self.epoch[task] = value, epoch
                improved.append(task)
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "epoch": dict(self.epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.epoch = dict(state["best"]), dict(state["epoch"])


def fitting(trainer: pl.Trainer) -> bool:
    """A validation of the fitting loop (not the sanity check, nor a ``trainer.validate`` after it)."""
    return trainer.state.fn == "fit" and not trainer.sanity_checking


class HeadSelection(pl.Callback):
    """Keeps each head's weights (CPU copies) from the validation epoch where its ``metric`` was
    best: the weights that validation measured (with ``callbacks=[ema,per_head]``, the average
    where it was kept).

    Args:
        metric: the per-head validation metric (``acc``, ``f1``, ``auroc``, ``loss``).
        mode: ``max`` or ``min`` (default: ``min`` for ``loss``, else ``max``).
        swap: after fitting, ``better`` puts a head's best weights on the best checkpoint's
            backbone where that scores better on validation; ``never`` only reports.
    """

    def __init__(self, metric: str = "acc", mode: str | None = None, swap: str = "better") -> None:
        if swap not in ("better", "never"):
            raise ConfigError(f"swap: expected better or never, got '{swap}'")
        self.tracker = HeadTracker(metric, mode)
        self.swap = swap
        self.weights: dict[str, dict[str, Tensor]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not fitting(trainer):
            return
        heads = reported_module(trainer, pl_module).net.heads  # with weight averaging, the weights kept
        for task in self.tracker.update(pl_module.last_results.get("val", {}), trainer.current_epoch):
            self.weights[task] = {k: v.detach().to("cpu", copy=True) for k, v in heads[task].state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
        self.weights = {task: dict(w) for task, w in state_dict["weights"].items()}


class HeadEarlyStopping(pl.Callback):
    """Stops training once every head has gone ``patience`` validations without its ``metric``
    improving by more than ``min_delta``; ``patience_per_head`` ``{task: n}`` gives a head its own.
    Each head's count of validations without improvement is logged as ``early_stop/<task>/wait``."""

    def __init__(self, metric: str = "acc", mode: str | None = None, patience: int = 5,
                 patience_per_head: Mapping[str, int] | None = None, min_delta: float = 0.0) -> None:
        self.tracker = HeadTracker(metric, mode, min_delta)
        self.patience = int(patience)
        self.patience_per_head = {str(k): int(v) for k, v in dict(patience_per_head or {}).items()}
        if self.patience < 1 or any(v < 1 for v in self.patience_per_head.values()):
            raise ConfigError(f"patience must be >= 1, got {self.patience} and per head {self.patience_per_head}")
        self.wait: dict[str, int] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        unknown = sorted(set(self.patience_per_head) - set(pl_module.tasks))
        if unknown:
            raise ConfigError(f"patience_per_head: unknown task(s) {unknown}; the tasks are {sorted(pl_module.tasks)}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not fitting(trainer):
            return
        results = pl_module.last_results.get("val", {})
        improved = set(self.tracker.update(results, trainer.current_epoch))
        for task in results:
            self.wait[task] = 0 if task in improved else self.wait.get(task, 0) + 1
        for logger in trainer.loggers:
            logger.log_metrics({f"early_stop/{task}/wait": float(n) for task, n in self.wait.items()}, step=trainer.global_step)
        stopped = [task for task in pl_module.tasks if self.wait.get(task, 0) >= self.patience_per_head.get(task, self.patience)]
        if len(stopped) == len(pl_module.tasks) and not trainer.should_stop:
            trainer.should_stop = True
            log.info(f"every head stopped improving its val {self.tracker.metric} (best epochs {self.tracker.epoch}); "
                     f"stopping after epoch {trainer.current_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "wait": dict(self.wait)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
        self.wait = dict(state_dict["wait"])


def swap_in_best_heads(module: Any, selection: HeadSelection, best_epoch: int,
                       baseline: Mapping[str, Mapping[str, float]],
                       validate: Callable[[], Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Any]]:
    """Put each head's own best weights on ``module`` (which holds the best checkpoint, of epoch
    ``best_epoch``, whose per-head validation results are ``baseline``) and keep those that score
    better on validation (``validate()``: per-head results of the module as it stands). The
    report per head: the checkpoint's epoch and metric, the head's own best epoch and the metric
    with its weights swapped in (``None`` when that epoch is the checkpoint's), and whether it
    was ``kept``. A child head is measured under its parent's swapped head, so decisions that
    interact are settled by validating the final model again (the caller's)."""
    tracker = selection.tracker
    report = {task: {"checkpoint_epoch": best_epoch, "checkpoint": baseline.get(task, {}).get(tracker.metric),
                     "own_best_epoch": tracker.epoch.get(task), "swapped": None, "kept": False} for task in module.tasks}
    candidates = [task for task in module.tasks
                  if task in selection.weights and tracker.epoch.get(task) != best_epoch]
    if not candidates:
        return report
    original = {task: copy.deepcopy(module.net.heads[task].state_dict()) for task in candidates}
    for task in candidates:
        load_head(module, task, selection.weights[task])
    swapped = validate()
    for task in candidates:
        entry = report[task]
        entry["swapped"] = swapped.get(task, {}).get(tracker.metric)
        helps = entry["swapped"] is not None and tracker.better(entry["swapped"], entry["checkpoint"])
        entry["kept"] = bool(helps and selection.swap == "better")
        if not entry["kept"]:
            load_head(module, task, original[task])
    return report


def load_head(module: Any, task: str, state: Mapping[str, Tensor]) -> None:
    head = module.net.heads[task]
    device = next(head.parameters()).device
    with torch.no_grad():
        head.load_state_dict({k: v.to(device) for k, v in state.items()})
