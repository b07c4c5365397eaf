"""Per-head torchmetrics, fed only the labelled samples of each task.

Masked samples are removed before ``update``, so a head's metric on masked data equals the
metric on its labelled subset, and a batch with no labels for a task is simply skipped. The
accuracy and F1 of binary heads are kept together, as the labels of one multilabel metric that
ignores masked samples: with many binary heads (attributes, tags) one update serves them all.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    AUROC,
    Accuracy,
    BinaryPrecisionRecallCurve,
    ConfusionMatrix,
    F1Score,
    MultilabelAccuracy,
    MultilabelF1Score,
    MultilabelPrecisionRecallCurve,
)

from mhc.tasks import TaskSpec

# Binned AUROC: fixed-size states that sum across processes (exact AUROC gathers every
# prediction, and fails under DDP when one process saw no labelled sample of a task).
AUROC_THRESHOLDS = 200


def task_metrics(task: TaskSpec, auroc: bool = True) -> MetricCollection:
    """Accuracy and macro-F1 for every head; AUROC for binary and multilabel heads (unless ``auroc=False``).

    Labels are checked where they are read (the data modules), so the metrics skip torchmetrics'
    per-update argument checks; accuracy and F1 share one set of stat scores.
    """
    if task.kind == "multiclass":
        # accuracy counts all classes at once, macro-F1 per class: their states differ, so no shared group
        kw = {"task": "multiclass", "num_classes": task.num_classes, "validate_args": False}
        return MetricCollection({"acc": Accuracy(**kw), "f1": F1Score(average="macro", **kw)}, compute_groups=False)
    if task.kind == "binary":
        kw = {"task": "binary", "validate_args": False}
    else:
        kw = {"task": "multilabel", "num_labels": task.num_classes, "average": "macro", "validate_args": False}
    metrics = {"acc": Accuracy(**kw), "f1": F1Score(**kw)}
    if not auroc:
        return MetricCollection(metrics, compute_groups=[["acc", "f1"]])
    return MetricCollection({**metrics, "auroc": task_auroc(task)}, compute_groups=[["acc", "f1"], ["auroc"]])


def task_auroc(task: TaskSpec) -> AUROC:
    """The binned AUROC of a binary or multilabel head (macro over a multilabel head's classes);
    its state is the binned precision-recall curve (:func:`precision_recall_curve`)."""
    if task.kind == "binary":
        return AUROC(task="binary", thresholds=AUROC_THRESHOLDS, validate_args=False)
    return AUROC(task="multilabel", num_labels=task.num_classes, average="macro", thresholds=AUROC_THRESHOLDS,
                 validate_args=False)


def precision_recall_curve(metric: AUROC) -> tuple[Tensor, Tensor, Tensor]:
    """Precision [outputs, K + 1], recall [outputs, K + 1] and the thresholds [K] of a
    :func:`task_auroc` metric's binned state (a binary head has one output)."""
    if isinstance(metric, MultilabelPrecisionRecallCurve):
        return MultilabelPrecisionRecallCurve.compute(metric)
    precision, recall, thresholds = BinaryPrecisionRecallCurve.compute(metric)
    return precision[None], recall[None], thresholds


IGNORED = -1  # the target of a masked sample among the binary heads


def binary_heads_metrics(num_heads: int) -> MetricCollection:
    """Accuracy and F1 of ``num_heads`` binary heads at once, per head (``average=None``); each
    equals the head's own binary metric on its labelled samples."""
    kw = {"num_labels": num_heads, "average": None, "ignore_index": IGNORED, "validate_args": False}
    return MetricCollection({"acc": MultilabelAccuracy(**kw), "f1": MultilabelF1Score(**kw)}, compute_groups=[["acc", "f1"]])


def task_confusion(task: TaskSpec) -> ConfusionMatrix:
    """Confusion matrix: [C, C] for multiclass, [2, 2] for binary, [C, 2, 2] for multilabel."""
    if task.kind == "multiclass":
        return ConfusionMatrix(task="multiclass", num_classes=task.num_classes)
    if task.kind == "binary":
        return ConfusionMatrix(task="binary")
    return ConfusionMatrix(task="multilabel", num_labels=task.num_classes)



class HeadMetrics(nn.Module):
    """One ``MetricCollection`` per task, plus its loss averaged over labelled samples; binary
    heads (when there are several) share one accuracy-and-F1 metric.

    Accuracy, F1 and the confusion count the decisions: a binary or multilabel output is positive
    at or above its task's threshold (:meth:`TaskSpec.decision_thresholds`, 0.5 unless tuned).
    AUROC ranks the probabilities; ``auroc=False`` leaves it out (the training stage: its binned
    update costs as much as accuracy and F1 together, on every step).
    """

    def __init__(self, tasks: Mapping[str, TaskSpec], confusion: bool = False, auroc: bool = True) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        binary = [name for name, t in self.tasks.items() if t.kind == "binary"]
        self.binary = binary if len(binary) > 1 else []
        self.binary_metrics = binary_heads_metrics(len(self.binary)) if self.binary else None
        self.metrics = nn.ModuleDict({name: task_metrics(t, auroc=False) for name, t in self.tasks.items()
                                      if name not in self.binary})
        self.ranking = nn.ModuleDict({name: task_auroc(t) for name, t in self.tasks.items()
                                      if auroc and t.kind != "multiclass"})
        self.confusion = nn.ModuleDict({name: task_confusion(t) for name, t in self.tasks.items()}) if confusion else None
        self.losses = nn.ModuleDict({name: MeanMetric() for name in self.tasks})
        self.track_losses = False
        self.seen = dict.fromkeys(self.tasks, 0)
        self.use_tasks(self.tasks.values())

    def use_tasks(self, tasks: Iterable[TaskSpec]) -> None:
        """Take the decision thresholds of ``tasks`` (the same tasks, e.g. calibrated) from now on."""
        self.tasks.update({t.name: t for t in tasks})
        # every decision made here, as the decoder makes it (p >= t; torchmetrics' own test is p > t)
        self.cuts = {name: t.decision_thresholds() for name, t in self.tasks.items() if t.kind != "multiclass"}

    def decided(self, name: str, probs: Tensor) -> Tensor:
        """A task's probabilities as torchmetrics reads its decisions (1.0 at or above the threshold)."""
        cut = self.cuts.get(name)
        return probs if cut is None else (probs >= probs.new_tensor(cut if probs.dim() > 1 else cut[0])).to(probs.dtype)

    @torch.no_grad()
    def update(
        self,
        probs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        label_mask: Mapping[str, Tensor],
        losses: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add a batch; ``losses`` (per-task batch means) are averaged over labelled samples."""
        self.track_losses = self.track_losses or losses is not None
        keep = {name: label_mask[name].bool() for name in self.tasks}
        counts = dict(zip(self.tasks, torch.stack([k.sum() for k in keep.values()]).tolist()))  # one sync
        for name, labelled in counts.items():
            if not labelled:
                continue
            self.seen[name] += labelled
            if losses is not None:
                self.losses[name].update(losses[name].detach(), weight=labelled)
            p, y = probs[name][keep[name]], targets[name][keep[name]].long()
            if name in self.ranking:
                self.ranking[name].update(p, y)
            p = self.decided(name, p)
            if name in self.metrics:
                self.metrics[name].update(p, y)
            if self.confusion is not None:
                self.confusion[name].update(p, y)
        if self.binary and any(counts[name] for name in self.binary):
            p = torch.stack([self.decided(name, probs[name]) for name in self.binary], dim=1)  # [B, binary heads]
            y = torch.stack([torch.where(keep[name], targets[name].long(), IGNORED) for name in self.binary], dim=1)
            self.binary_metrics.update(p, y)

    def labelled_counts(self) -> Tensor:
        """Labelled samples seen per task [T] (on this process), in task order."""
        return torch.tensor([float(self.seen[name]) for name in self.tasks])

    def compute(self, labelled_counts: Tensor | None = None) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` for tasks that saw at least one labelled sample.

        Under DDP pass the counts summed over processes, so every process computes (and
        synchronises) the same metrics; computing on one process alone would deadlock.
        """
        counts = self.labelled_counts() if labelled_counts is None else labelled_counts
        counts = dict(zip(self.tasks, counts.tolist()))
        results: dict[str, dict[str, float]] = {name: {} for name, count in counts.items() if count > 0}
        if any(counts[name] for name in self.binary):
            together = self.binary_metrics.compute()
            for i, name in enumerate(self.binary):
                if name in results:
                    results[name].update({k: float(v[i]) for k, v in together.items()})
        for name in results:
            if name in self.metrics:
                results[name].update({k: float(v) for k, v in self.metrics[name].compute().items()})
            if name in self.ranking:
                results[name]["auroc"] = float(self.ranking[name].compute())
            if self.track_losses:
                results[name]["loss"] = float(self.losses[name].compute())
        return results

    def names(self, task: str) -> list[str]:
        """The metrics :meth:`compute` reports for ``task`` (with its loss, when losses are given)."""
        found = list(self.binary_metrics.keys()) if task in self.binary else list(self.metrics[task].keys())
        return [*found, *(["auroc"] if task in self.ranking else []), "loss"]

    def confusion_matrices(self, labelled_counts: Tensor | None = None) -> dict[str, Tensor]:
        """Per-task confusion matrices (synchronised like :meth:`compute`)."""
        if self.confusion is None:
            return {}
        counts = self.labelled_counts() if labelled_counts is None else labelled_counts
        return {name: self.confusion[name].compute() for name, count in zip(self.tasks, counts.tolist()) if count > 0}

    def precision_recall_curves(self, labelled_counts: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Per multilabel task, precision and recall [classes, K] over the binned thresholds
        (synchronised like :meth:`compute`)."""
        counts = self.labelled_counts() if labelled_counts is None else labelled_counts
        return {name: precision_recall_curve(self.ranking[name])[:2] for name, count in zip(self.tasks, counts.tolist())
                if count > 0 and name in self.ranking and self.tasks[name].kind == "multilabel"}

    def reset(self) -> None:
        self.seen = dict.fromkeys(self.tasks, 0)
        for metric in [*self.metrics.values(), *self.ranking.values(), *self.losses.values(),
                       *(self.confusion or {}).values(), self.binary_metrics]:
            if metric is not None:
                metric.reset()
        self.track_losses = False


def flatten_results(results: Mapping[str, Mapping[str, float]], prefix: str) -> dict[str, float]:
    """``{prefix/task/metric: v}`` plus ``{prefix/mean/metric: mean over tasks}``."""
    flat = {f"{prefix}/{task}/{name}": value for task, values in results.items() for name, value in values.items()}
    names = sorted({name for values in results.values() for name in values})
    for name in names:
        values = [v[name] for v in results.values() if name in v]
        flat[f"{prefix}/mean/{name}"] = sum(values) / len(values)
    return flat


LOWER_IS_BETTER = frozenset({"loss"})


def delta_m(results: Mapping[str, Mapping[str, float]], baseline: Mapping[str, float], metric: str = "acc") -> float:
    """The multi-task improvement Delta_m (Maninis et al. 2019), in percent: the mean over tasks of
    each head's relative gain ``(M_t - B_t) / B_t`` over a baseline, sign-flipped for metrics
    where lower is better (``loss``). Tasks missing from either side are left out."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    gains = [
        sign * (values[metric] - baseline[task]) / abs(baseline[task])
        for task, values in results.items()
        if metric in values and baseline.get(task) not in (None, 0)
    ]
    return 100.0 * sum(gains) / len(gains) if gains else float("nan")


def per_class_scores(task: TaskSpec, matrix: Tensor) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a head's confusion matrix
    (:func:`task_confusion`, counted at its decision thresholds): every class of a multiclass or
    binary head (rows are the true class), each label of a multilabel head (its own 2x2). A
    score with an empty denominator is 0, as scikit-learn's ``zero_division=0``."""
    m = matrix.detach().double().cpu()
    if task.kind == "multilabel":
        tp, fp, fn = m[:, 1, 1], m[:, 0, 1], m[:, 1, 0]
    else:
        tp = m.diagonal()
        fp, fn = m.sum(0) - tp, m.sum(1) - tp
    zero = torch.zeros_like(tp)
    precision = torch.where(tp + fp > 0, tp / (tp + fp), zero)
    recall = torch.where(tp + fn > 0, tp / (tp + fn), zero)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), zero)
    return [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(task.classes, precision, recall, f1, tp + fn)]
