"""Calibrated probabilities and decision thresholds per head, fitted on labelled validation outputs.

* **Temperature scaling** (Guo et al. 2017): a multiclass head's logits are divided by one
  temperature before the softmax over its allowed classes, a binary or multilabel head's by one
  temperature per output before the sigmoid. Each is fitted by minimising the negative
  log-likelihood of the labelled samples (label masks honoured, output masks applied as the
  decoder applies them: a child task's under its parent's predicted class) over ``log T`` with
  L-BFGS, so that ``T`` stays positive. The argmax of a multiclass head never changes, nor does
  a sigmoid's 0.5 point: thresholds move decisions.
* **Thresholds per class** for binary and multilabel heads: a class is predicted where its
  probability is at least its threshold, chosen on validation for an objective: ``f1`` (the
  class's F1), ``precision@P`` (the most recall at a precision of at least ``P``), ``recall@R``
  (the most precision at a recall of at least ``R``) or ``fixed:T``.
* **Platt scaling** (Platt 1999), the option for binary and multilabel heads: a scale and an
  intercept per output, ``sigmoid(z / T + b)``, fitted the same way.
* **Expected calibration error** (torchmetrics' ``calibration_error``: 15 bins, L1) and the
  **Brier score** per head, to report before and after, with the points of a reliability
  diagram and, for multiclass and binary heads, the coverage/accuracy curve of abstaining
  under a confidence (:attr:`TaskSpec.min_confidence`).

:func:`calibrate_tasks` fits every head of a model on one split's logits and labels;
:func:`calibration_report` says what it changed. Labels are the data's collated form:
``{"targets": {task: T}, "label_mask": {task: M}, "allowed": {task: A}}`` (``allowed`` optional).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mhc.errors import ConfigError
from mhc.masks import apply_output_mask, decoding_masks
from mhc.tasks import TaskSpec, threshold_objective

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # outside it a temperature says more about the split than the model
METHODS = ("temperature", "platt")
COVERAGES = tuple(round(1.0 - 0.05 * i, 2) for i in range(20))  # 1.0, 0.95, ..., 0.05
Labels = Mapping[str, Mapping[str, Tensor]]


def scaled_logits(task: TaskSpec, logits: Tensor) -> Tensor:
    """``task``'s logits as its calibration leaves them: divided by the temperature(s), plus Platt's
    intercepts; unchanged for an uncalibrated task. Every runtime decodes through this."""
    out = logits.float()
    if task.temperature is not None:
        out = out / out.new_tensor(task.temperature if task.kind == "multilabel" else task.temperature[0])
    if task.calibration_bias is not None:
        out = out + out.new_tensor(task.calibration_bias if task.kind == "multilabel" else task.calibration_bias[0])
    return out


def probabilities(task: TaskSpec, logits: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Calibrated probabilities: softmax over the ``allowed`` classes [N, C] (multiclass),
    P(positive) [N] (binary) or per-class sigmoids [N, C] (multilabel)."""
    out = scaled_logits(task, logits)
    if task.kind == "multiclass":
        return torch.softmax(apply_output_mask(out, allowed), dim=-1)
    return torch.sigmoid(out.squeeze(-1) if task.kind == "binary" else out)


def minimise(loss: Any, parameters: list[Tensor], max_iter: int = 100) -> None:
    """Minimise the smooth ``loss()`` over ``parameters`` with L-BFGS (strong Wolfe line search)."""
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)


def labelled_outputs(task: TaskSpec, outputs: Tensor, targets: Tensor, label_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The labelled samples' outputs (logits or probabilities) and targets: class indices for a
    multiclass head, float [N, outputs] for a binary or multilabel head."""
    keep = label_mask.bool()
    z, y = outputs.detach().float()[keep], targets[keep]
    if task.kind == "multiclass":
        return z, y.long()
    return z.reshape(len(z), task.num_outputs), y.reshape(len(y), task.num_outputs).float()  # also with no sample


def uninformative(y: Tensor) -> Tensor:
    """Outputs [outputs] whose labelled targets are all one value: nothing to calibrate against."""
    positives = y.sum(0)
    return (positives == 0) | (positives == len(y))


def fit_temperature(task: TaskSpec, logits: Tensor, targets: Tensor, label_mask: Tensor,
                    allowed: Tensor | None = None, max_iter: int = 100) -> list[float]:
    """The temperature(s) of ``task`` minimising the NLL of its labelled samples: one value for a
    multiclass head, one per output for a binary or multilabel head. An output whose labelled
    targets are all one value (nothing to calibrate against), or a head with no labelled
    sample, keeps 1."""
    width = 1 if task.kind != "multilabel" else task.num_classes
    if not bool(label_mask.bool().any()):
        return [1.0] * width
    z, y = labelled_outputs(task, logits, targets, label_mask)
    log_t = torch.zeros(width, requires_grad=True)
    if task.kind == "multiclass":
        mask = None if allowed is None else allowed[label_mask.bool()]
        minimise(lambda: F.cross_entropy(apply_output_mask(z / log_t.exp(), mask), y), [log_t], max_iter)
    else:  # the outputs' NLLs summed: each temperature fitted on its own output
        minimise(lambda: F.binary_cross_entropy_with_logits(z / log_t.exp(), y, reduction="none").mean(0).sum(),
                 [log_t], max_iter)
    fitted = log_t.detach().exp().clamp(*TEMPERATURE_RANGE)
    if task.kind != "multiclass":
        fitted = torch.where(uninformative(y), torch.ones_like(fitted), fitted)
    return [float(t) for t in fitted]


def fit_platt(task: TaskSpec, logits: Tensor, targets: Tensor, label_mask: Tensor,
              max_iter: int = 100) -> tuple[list[float], list[float]]:
    """Platt scaling of a binary or multilabel head: per output a temperature ``T`` and an
    intercept ``b`` minimising the NLL of ``sigmoid(z / T + b)`` over the labelled samples. The
    scale stays positive (the ranking of samples never changes); an output with one target value
    keeps ``T = 1, b = 0``."""
    if task.kind == "multiclass":
        raise ConfigError(f"task '{task.name}': Platt scaling applies to binary and multilabel heads; a multiclass "
                          "head is calibrated by temperature")
    if not bool(label_mask.bool().any()):
        return [1.0] * task.num_outputs, [0.0] * task.num_outputs
    z, y = labelled_outputs(task, logits, targets, label_mask)
    log_t = torch.zeros(task.num_outputs, requires_grad=True)
    bias = torch.zeros(task.num_outputs, requires_grad=True)
    minimise(lambda: F.binary_cross_entropy_with_logits(z / log_t.exp() + bias, y, reduction="none").mean(0).sum(),
             [log_t, bias], max_iter)
    skip = uninformative(y)
    fitted = torch.where(skip, torch.ones_like(log_t), log_t.detach().exp().clamp(*TEMPERATURE_RANGE))
    shift = torch.where(skip, torch.zeros_like(bias), bias.detach())
    return [float(t) for t in fitted], [float(b) for b in shift]


def best_threshold(probs: Tensor, targets: Tensor, objective: str) -> float:
    """The threshold on ``probs`` [N] (predict where ``p >= t``) that best meets ``objective`` for
    the 0/1 ``targets`` [N]. Every distinct probability is a candidate. ``precision@P`` that no
    threshold reaches falls back to the most precise threshold; with no positive target the
    threshold is 0.5."""
    kind, value = threshold_objective(objective)
    if kind == "fixed":
        return value
    positives = float(targets.sum())
    if positives == 0 or len(probs) == 0:
        return 0.5
    order = torch.argsort(probs.double(), descending=True)
    scores, hits = probs.double()[order], targets.double()[order]
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[:-1] != scores[1:]  # a cut-off predicts every sample tied with it
    tp = torch.cumsum(hits, 0)[last_of_tie]
    predicted = (torch.nonzero(last_of_tie).flatten() + 1).double()
    cutoffs = scores[last_of_tie]
    precision, recall = tp / predicted, tp / positives
    if kind == "f1":
        choice = int(torch.argmax(2 * tp / (predicted + positives)))
    elif kind == "precision":
        reached = torch.nonzero(precision >= value).flatten()
        choice = int(reached[-1]) if len(reached) else int(torch.argmax(precision))  # the last: the most recall
    else:
        choice = int(torch.nonzero(recall >= value).flatten()[0])  # the first: the highest threshold
    return float(cutoffs[choice])


def tune_thresholds(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor, objective: str) -> list[float]:
    """One threshold per output of a binary or multilabel ``task`` (:func:`best_threshold` over
    its labelled samples)."""
    if task.kind == "multiclass":
        raise ConfigError(f"task '{task.name}': thresholds apply to binary and multilabel tasks; a multiclass head "
                          "predicts its most probable class")
    p, y = labelled_outputs(task, probs, targets, label_mask)
    return [best_threshold(p[:, c], y[:, c], objective) for c in range(task.num_outputs)]


def calibration_scores(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor) -> Mapping[str, float]:
    """``ece`` (expected calibration error) and ``brier`` of ``task``'s probabilities over its
    labelled samples. Multiclass: the top-label ECE and ``mean sum_c (p_c - [y = c])^2``; binary:
    both of P(positive); multilabel: each output's, averaged over the outputs."""
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    if not bool(label_mask.bool().any()):
        return {"ece": float("nan"), "brier": float("nan")}
    p, y = labelled_outputs(task, probs, targets, label_mask)
    if task.kind == "multiclass":
        ece = multiclass_calibration_error(p, y, num_classes=task.num_classes, n_bins=BINS, norm="l1")
        brier = (p - F.one_hot(y, task.num_classes).float()).pow(2).sum(-1).mean()
        return {"ece": float(ece), "brier": float(brier)}
    ece = torch.stack([binary_calibration_error(p[:, c].contiguous(), y[:, c].long(), n_bins=BINS, norm="l1")
                       for c in range(p.shape[1])]).mean()
    return {"ece": float(ece), "brier": float((p - y).pow(2).mean())}


def reliability(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor, bins: int = BINS) -> dict[str, list]:
    """The points of a reliability diagram over the labelled samples, in ``bins`` equal-width bins
    of confidence (empty bins left out): each bin's mean ``confidence``, the ``accuracy`` (the
    frequency of the event) there and its sample ``count``. Multiclass: the top class's
    probability and whether it is right; binary and multilabel: P(positive) of every output and
    whether it is positive."""
    keep = label_mask.bool()
    p, y = probs.detach().float()[keep], targets[keep]
    if task.kind == "multiclass":
        confidence, hit = p.max(-1).values, (p.argmax(-1) == y.long()).float()
    else:
        confidence, hit = p.reshape(-1), y.reshape(-1).float()
    index = (confidence * bins).long().clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    total_confidence = torch.bincount(index, weights=confidence.double(), minlength=bins)
    total_hits = torch.bincount(index, weights=hit.double(), minlength=bins)
    filled = count > 0
    return {"confidence": (total_confidence[filled] / count[filled]).tolist(),
            "accuracy": (total_hits[filled] / count[filled]).tolist(), "count": count[filled].long().tolist()}


def decisions(task: TaskSpec, probs: Tensor) -> tuple[Tensor, Tensor]:
    """A multiclass or binary head's decision per sample at its thresholds, and its confidence
    (the top probability: ``max(p, 1 - p)`` for a binary head)."""
    if task.kind == "multiclass":
        return probs.argmax(-1), probs.max(-1).values
    return (probs >= task.decision_thresholds()[0]).long(), torch.maximum(probs, 1 - probs)


def coverage_curve(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor,
                   coverages: Iterable[float] = COVERAGES) -> dict[str, list[float]]:
    """Abstention on the labelled samples of a multiclass or binary head: for each ``coverage``
    (the share of samples the head still decides), the accuracy on the most confident samples
    that make it up and the ``confidence`` (``min_confidence``) that keeps them."""
    keep = label_mask.bool()
    predicted, confidence = decisions(task, probs.detach().float()[keep])
    hit = (predicted == targets[keep].long()).double()
    order = torch.argsort(confidence, descending=True, stable=True)
    hits, ranked = torch.cumsum(hit[order], 0), confidence[order]
    curve: dict[str, list[float]] = {"coverage": [], "accuracy": [], "confidence": []}
    for coverage in coverages if len(order) else ():
        kept = max(1, round(coverage * len(order)))
        curve["coverage"].append(float(coverage))
        curve["accuracy"].append(float(hits[kept - 1] / kept))
        curve["confidence"].append(float(ranked[kept - 1]))
    return curve


def f1_scores(task: TaskSpec, probs: Tensor, targets: Tensor, label_mask: Tensor) -> list[float]:
    """Each output's F1 at the task's decision thresholds over the labelled samples (binary: the
    positive class; multilabel: each class)."""
    p, y = labelled_outputs(task, probs, targets, label_mask)
    y = y.bool()
    predicted = p >= p.new_tensor(task.decision_thresholds())
    tp = (predicted & y).sum(0).double()
    wrong = (predicted ^ y).sum(0).double()
    return [float(v) for v in torch.where(tp + wrong > 0, 2 * tp / (2 * tp + wrong), torch.zeros_like(tp))]


def calibrate_tasks(tasks: Iterable[TaskSpec], logits: Mapping[str, Tensor], labels: Labels,
                    method: str = "temperature", objectives: Mapping[str, str] | None = None) -> list[TaskSpec]:
    """Every head calibrated on one split: the temperature(s) (or Platt scaling for binary and
    multilabel heads, ``method="platt"``), then for binary and multilabel heads one threshold per
    output on the calibrated probabilities, for the task's ``threshold`` objective (or
    ``objectives[name]``, which is stored as the task's objective)."""
    if method not in METHODS:
        raise ConfigError(f"method: expected one of {list(METHODS)}, got '{method}'")
    objectives = dict(objectives or {})
    tasks = list(tasks)
    masks = decoding_masks({t.name: t for t in tasks}, logits, labels.get("allowed"))
    calibrated = []
    for task in tasks:
        targets, mask = labels["targets"][task.name], labels["label_mask"][task.name]
        allowed = masks.get(task.name)
        if method == "platt" and task.kind != "multiclass":
            temperature, bias = fit_platt(task, logits[task.name], targets, mask)
        else:
            temperature, bias = fit_temperature(task, logits[task.name], targets, mask, allowed), None
        task = dataclasses.replace(task, temperature=temperature, calibration_bias=bias, thresholds=None,
                                   threshold=objectives.get(task.name, task.threshold))
        if task.kind != "multiclass":
            probs = probabilities(task, logits[task.name], allowed)
            task = dataclasses.replace(task, thresholds=tune_thresholds(task, probs, targets, mask, task.threshold))
        calibrated.append(task)
    return calibrated


def calibration_report(before: Iterable[TaskSpec], after: Iterable[TaskSpec], logits: Mapping[str, Tensor],
                       labels: Labels, curves: bool = True) -> dict[str, dict[str, Any]]:
    """Per task, what calibration changed on one split: ``ece`` and ``brier`` ``before`` and
    ``after``; for binary and multilabel heads each output's ``f1`` at 0.5 (``before``) and at the
    tuned thresholds (``after``). With ``curves``, also the ``reliability`` diagram's points before
    and after and, for multiclass and binary heads, the calibrated ``coverage`` curve."""
    report: dict[str, dict[str, Any]] = {}
    before, after = list(before), list(after)
    masks = decoding_masks({t.name: t for t in after}, logits, labels.get("allowed"))
    for old, new in zip(before, after):
        targets, mask = labels["targets"][new.name], labels["label_mask"][new.name]
        allowed = masks.get(new.name)
        p_old, p_new = (probabilities(t, logits[new.name], allowed) for t in (old, new))
        entry: dict[str, Any] = {"labelled": int(mask.bool().sum()),
                                 "before": dict(calibration_scores(old, p_old, targets, mask)),
                                 "after": dict(calibration_scores(new, p_new, targets, mask))}
        if new.kind != "multiclass":
            plain = dataclasses.replace(new, thresholds=None, threshold="fixed:0.5")
            entry["before"]["f1"] = f1_scores(plain, p_old, targets, mask)
            entry["after"]["f1"] = f1_scores(new, p_new, targets, mask)
        if curves:
            entry["reliability"] = {"before": reliability(old, p_old, targets, mask),
                                    "after": reliability(new, p_new, targets, mask)}
            if new.kind != "multilabel":
                entry["coverage"] = coverage_curve(new, p_new, targets, mask)
        report[new.name] = entry
    return report


REPORT_KEYS = ("split", "method", "tasks")  # a calibration report's own keys; any other key is a split scored


def report_by_split(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A calibration report's per-task scores by split: the split it was fitted on first, then
    every other split it scored (``{"val": {task: entry}, "test": {...}}``)."""
    return {report["split"]: report["tasks"], **{k: v for k, v in report.items() if k not in REPORT_KEYS}}


def calibration_fields(task: TaskSpec) -> dict[str, Any]:
    """What calibration stores on a task, as plain data."""
    return {"temperature": task.temperature, "calibration_bias": task.calibration_bias,
            "threshold": task.threshold, "thresholds": task.thresholds}
