"""Calibration of a trained model's heads on a labelled split, as ``mhc-calibrate`` and
``mhc-train calibrate=true`` run it.

The heads' logits on the split (validation by default) fit their temperatures (or Platt
scaling) and the binary and multilabel heads' thresholds (:mod:`mhc.calibration`); the
calibrated tasks are stored in the checkpoint, which every runtime then decodes with. What it
changed (ECE and Brier before and after, on that split and on the test split when there is one;
reliability diagrams; coverage curves) is the calibration report: saved in the checkpoint, in
``calibration.json``, as figures, and sent to the run's loggers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import OmegaConf
from torch import Tensor

from mhc.api.build import checkpoint_with_data
from mhc.api.config import ConfigLike, as_config
from mhc.calibration import METHODS, calibrate_tasks, calibration_fields, calibration_report, report_by_split
from mhc.data.labels import batch_inputs
from mhc.errors import ConfigError
from mhc.io import atomic_path, update_checkpoint
from mhc.tasks import TaskSpec, threshold_objective
from mhc.tracking import log_figure, pyplot
from mhc.training.figures import CALIBRATION_FIGURES

log = logging.getLogger(__name__)
LABEL_KEYS = ("targets", "label_mask", "allowed")
REPORT_FILE = "calibration.json"


@torch.no_grad()
def split_outputs(net: torch.nn.Module, loader: Iterable[Mapping[str, Any]],
                  device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Every sample's logits per task on the CPU, in order, and the split's labels collated
    (``{"targets": {task: T}, "label_mask": {...}, "allowed": {...}}``)."""
    was_training = net.training
    net.eval()
    logits: dict[str, list[Tensor]] = {}
    labels: dict[str, dict[str, list[Tensor]]] = {key: {} for key in LABEL_KEYS}
    try:
        for batch in loader:
            for name, value in net(batch_inputs(batch).to(device)).items():
                logits.setdefault(name, []).append(value.float().cpu())
            for key in LABEL_KEYS:
                for name, value in batch.get(key, {}).items():
                    labels[key].setdefault(name, []).append(value.cpu())
    finally:
        net.train(was_training)
    return ({name: torch.cat(parts) for name, parts in logits.items()},
            {key: {name: torch.cat(parts) for name, parts in values.items()} for key, values in labels.items()})


def per_task(option: str, value: Any, tasks: Mapping[str, TaskSpec], kinds: tuple[str, ...]) -> dict[str, Any]:
    """An option given for every task (a value: the tasks of ``kinds`` take it) or per task (a
    mapping) as ``{task: value}``. An unknown task, or a task of another kind named in the
    mapping, is a :class:`ConfigError`."""
    if value is None:
        return {}
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if not isinstance(value, Mapping):
        return {name: value for name, task in tasks.items() if task.kind in kinds}
    for name in value:
        if name not in tasks:
            raise ConfigError(f"{option}: unknown task '{name}'; the model's tasks are {sorted(tasks)}")
        if tasks[name].kind not in kinds:
            raise ConfigError(f"{option}.{name}: applies to {' and '.join(kinds)} tasks; '{name}' is {tasks[name].kind}")
    return dict(value)


def decision_options(tasks: Mapping[str, TaskSpec], threshold: Any = None, min_confidence: Any = None) -> tuple[dict, dict]:
    """The threshold objectives of the binary and multilabel tasks and the ``min_confidence`` of
    the multiclass and binary tasks, each given for all or per task, checked."""
    objectives = {name: str(v) for name, v in per_task("threshold", threshold, tasks, ("binary", "multilabel")).items()}
    for name, objective in objectives.items():
        threshold_objective(objective, f"threshold.{name}")
    floors = per_task("min_confidence", min_confidence, tasks, ("multiclass", "binary"))
    for name, floor in floors.items():
        if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not 0.0 <= floor <= 1.0:
            raise ConfigError(f"min_confidence.{name}: expected a number in [0, 1], got {floor!r}")
    return objectives, floors


def calibrate_module(module: Any, datamodule: Any, split: str = "val", method: str = "temperature",
                     threshold: Any = None, min_confidence: Any = None,
                     report_splits: Iterable[str] = ("test",)) -> dict[str, Any]:
    """Calibrate ``module``'s heads on ``split`` of ``datamodule`` and make it decode with them
    (:meth:`MultiHeadModule.use_tasks`); the calibration report. ``threshold`` (an objective, or
    ``{task: objective}``) replaces the tasks' own objectives; ``min_confidence`` (a number, or
    ``{task: number}``) sets where heads abstain. The report covers ``split`` and each of
    ``report_splits`` that the data has."""
    if method not in METHODS:
        raise ConfigError(f"method: expected one of {list(METHODS)}, got '{method}'")
    if not datamodule.has_split(split):
        raise ConfigError(f"split: the data has no '{split}' split to calibrate on")
    objectives, floors = decision_options(module.tasks, threshold, min_confidence)
    device = module.device
    logits, labels = split_outputs(module.net, datamodule.loader(split, shard=False), device)  # every process alike
    before = list(module.tasks.values())
    after = [dataclasses.replace(t, min_confidence=float(floors.get(t.name, t.min_confidence)))
             for t in calibrate_tasks(before, logits, labels, method, objectives)]
    tasks = calibration_report(before, after, logits, labels)
    for task in after:
        tasks[task.name]["fitted"] = calibration_fields(task)
    report: dict[str, Any] = {"split": split, "method": method, "tasks": tasks}
    for other in report_splits:
        if other != split and datamodule.has_split(other):
            other_logits, other_labels = split_outputs(module.net, datamodule.loader(other, shard=False), device)
            report[other] = calibration_report(before, after, other_logits, other_labels, curves=False)
    module.use_tasks(after)
    return report


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``calibration/<split>/<task>/<ece|brier>_<before|after>`` of a report, for the loggers."""
    flat = {}
    for split, tasks in report_by_split(report).items():
        for name, entry in tasks.items():
            for when in ("before", "after"):
                for score in ("ece", "brier"):
                    value = entry[when].get(score)
                    if isinstance(value, float) and math.isfinite(value):
                        flat[f"calibration/{split}/{name}/{score}_{when}"] = value
    return flat


def save_report(report: Mapping[str, Any], folder: str | Path, loggers: Iterable[Any] = (), step: int = 0) -> Path:
    """Write ``calibration.json``, ``reliability.png`` and ``coverage.png`` to ``folder`` and send the
    scores and figures to ``loggers``; the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / REPORT_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    loggers = list(loggers)
    for logger in loggers:
        logger.log_metrics(report_metrics(report), step=step)
    for name, draw in CALIBRATION_FIGURES.items():
        figure = draw(report["tasks"])
        figure.savefig(folder / f"{name}.png", dpi=100)
        log_figure(loggers, f"calibration/{name}", figure, step)
        pyplot().close(figure)
    return folder


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Per task and split: ECE and Brier before and after, and what was fitted; for tables."""
    rows = []
    splits = report_by_split(report)
    for name, fitted in ((name, entry["fitted"]) for name, entry in report["tasks"].items()):
        for split, tasks in splits.items():
            entry = tasks[name]
            rows.append((name, split, *(f"{entry[when][score]:.4f}" for score in ("ece", "brier") for when in ("before", "after")),
                         listed(fitted["temperature"]), listed(fitted["thresholds"])))
    return rows


def listed(values: list[float] | None) -> str:
    """One value as it is, several as their range and count."""
    if not values:
        return "-"
    return f"{values[0]:.3g}" if len(values) == 1 else f"{min(values):.3g}-{max(values):.3g} ({len(values)})"


def calibrate(config: ConfigLike = None, *, ckpt: str | Path | None = None, output: str | Path | None = None,
              output_dir: str | Path | None = None, config_dir: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Calibrate checkpoint ``ckpt`` on ``split`` (default ``val``) of the configured data and
    write the calibrated checkpoint to ``output`` (default ``<output_dir>/calibrated.ckpt``; the
    input checkpoint is never changed unless ``output`` names it); its path and the report."""
    cfg = as_config(config, "calibrate", output_dir, config_dir, ckpt=ckpt, output=output)
    module, datamodule, trainer = checkpoint_with_data(cfg)
    module.to(trainer.strategy.root_device)
    report = calibrate_module(module, datamodule, cfg.split, cfg.method, cfg.threshold, cfg.min_confidence)
    out_dir = Path(cfg.paths.output_dir)
    target = Path(cfg.output) if cfg.output else out_dir / "calibrated.ckpt"
    update_checkpoint(cfg.ckpt, target, tasks=module.tasks.values(), calibration=report)
    save_report(report, out_dir)
    return target, report
