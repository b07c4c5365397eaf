"""Imbalanced labels: class weights from the training counts, and a sampler that balances a task.

* ``tasks.<name>.class_weights=balanced`` (multiclass): ``n / (C * n_c)`` over the labelled
  training samples, scikit-learn's ``compute_class_weight("balanced")``; a class absent from
  training keeps weight 1.
* ``tasks.<name>.pos_weight=balanced`` (binary, multilabel): ``n_negative / n_positive`` per
  output, as ``BCEWithLogitsLoss(pos_weight=...)`` expects; an output never positive keeps 1.
* ``data.balance=<task>``: training batches drawn with replacement so that each of the task's
  classes is drawn equally often (a sample weighs ``1 / n_c``); samples without the task's
  label keep the mean weight, so they are still seen.

Weights are computed once, when training starts, and saved in the task's options;
``loss.balanced_power`` (default 1) raises both kinds to a power, for a milder balance.
``tasks.<name>.bias_init=prior`` starts a head's output biases at the training labels' log
prior (:func:`prior_logits`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from mhc.data.labels import MISSING
from mhc.errors import ConfigError
from mhc.tasks import BALANCED, TaskSpec


def encoded_labels(dataset: Dataset, task: str) -> np.ndarray:
    """The encoded labels of ``task`` in ``dataset``, in its order (``-1`` where missing): read
    from the datasets that hold them (through subsets, concatenations and wrappers), else from
    its samples."""
    if isinstance(dataset, Subset):
        return encoded_labels(dataset.dataset, task)[np.asarray(dataset.indices)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([encoded_labels(part, task) for part in dataset.datasets])
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, dict) and task in labels:
        return np.asarray(labels[task])
    inner = getattr(dataset, "dataset", None)
    if isinstance(inner, Dataset):
        return encoded_labels(inner, task)
    rows = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        sample: dict[str, Any] = dataset[index]
        present = bool(sample["label_mask"].get(task, False))
        target = np.asarray(sample["targets"][task])
        rows.append(target if present else np.full_like(target, MISSING))
    return np.stack(rows)


def balanced_class_weights(task: TaskSpec, labels: np.ndarray) -> list[float]:
    labelled = labels[labels != MISSING]
    counts = np.bincount(labelled, minlength=task.num_classes).astype(np.float64)
    if not counts.sum():
        raise ConfigError(f"task '{task.name}': class_weights=balanced needs labelled training samples; there are none")
    return [float(counts.sum() / (task.num_classes * c)) if c else 1.0 for c in counts]


def balanced_pos_weight(task: TaskSpec, labels: np.ndarray) -> list[float]:
    rows = labels.reshape(len(labels), -1)
    labelled = rows[(rows != MISSING).all(axis=1)].astype(np.float64)
    if not len(labelled):
        raise ConfigError(f"task '{task.name}': pos_weight=balanced needs labelled training samples; there are none")
    positive = labelled.sum(axis=0)
    return [float((len(labelled) - p) / p) if p else 1.0 for p in positive]


def prior_logits(task: TaskSpec, labels: np.ndarray) -> list[float]:
    """The logits of the training base rates, with one pseudo-count per outcome (so a class never
    seen gets a finite logit): ``log p_c`` per class of a multiclass task (a softmax of them gives
    the class frequencies), ``log(p / (1 - p))`` per output of a binary or multilabel task."""
    if task.kind == "multiclass":
        labelled = labels[labels != MISSING]
        counts = np.bincount(labelled.astype(np.int64), minlength=task.num_classes) + 1.0
        return [float(v) for v in np.log(counts / counts.sum())]
    rows = labels.reshape(len(labels), -1)
    labelled = rows[(rows != MISSING).all(axis=1)].astype(np.float64)
    positive = (labelled.sum(axis=0) + 1.0) / (len(labelled) + 2.0)
    return [float(v) for v in np.log(positive / (1.0 - positive))]


def prior_loss(task: TaskSpec, labels: np.ndarray) -> float:
    """The loss of predicting the training base rates (:func:`prior_logits`) for every sample:
    the entropy of the class frequencies (multiclass), of each output's rate (binary), and their
    mean or sum over a multilabel head's outputs (``task.label_reduction``). What a first epoch
    should already be below."""
    logits = np.asarray(prior_logits(task, labels))
    if task.kind == "multiclass":
        labelled = labels[labels != MISSING].astype(np.int64)
        return float(-logits[labelled].mean()) if len(labelled) else 0.0
    rows = labels.reshape(len(labels), -1)
    labelled = rows[(rows != MISSING).all(axis=1)].astype(np.float64)
    if not len(labelled):
        return 0.0
    p = 1.0 / (1.0 + np.exp(-logits))
    per_output = -(labelled * np.log(p) + (1 - labelled) * np.log(1 - p)).mean(axis=0)
    return float(per_output.sum() if task.label_reduction == "sum" else per_output.mean())


def resolve_balanced(tasks: list[TaskSpec], dataset: Dataset, power: float = 1.0) -> list[TaskSpec]:
    """``tasks`` with ``balanced`` class or positive weights replaced by numbers from ``dataset``,
    raised to ``power`` (``loss.balanced_power``: 1 balances fully, 0.5 takes the square root,
    0 leaves every weight 1)."""
    if not 0.0 <= float(power) <= 1.0:
        raise ConfigError(f"loss.balanced_power must be in [0, 1], got {power!r}")
    resolved = []
    for task in tasks:
        changes: dict[str, Any] = {}
        if task.class_weights == BALANCED:
            weights = balanced_class_weights(task, encoded_labels(dataset, task.name))
            changes["class_weights"] = [w ** float(power) for w in weights]
        if task.pos_weight == BALANCED:
            weights = balanced_pos_weight(task, encoded_labels(dataset, task.name))
            changes["pos_weight"] = [w ** float(power) for w in weights]
        resolved.append(TaskSpec.from_dict({**task.to_dict(), **changes}) if changes else task)
    return resolved


def balancing_weights(task: TaskSpec, labels: np.ndarray) -> np.ndarray:
    """Per-sample weights drawing each class of a multiclass or binary ``task`` equally often."""
    if task.kind == "multilabel":
        raise ConfigError(f"data.balance: task '{task.name}' is multilabel; balance a multiclass or binary task")
    labels = labels.astype(np.int64)
    present = labels != MISSING
    if not present.any():
        raise ConfigError(f"data.balance: task '{task.name}' has no labelled training samples")
    counts = np.bincount(labels[present], minlength=task.num_classes)
    weights = np.zeros(len(labels), dtype=np.float64)
    weights[present] = 1.0 / counts[labels[present]]
    weights[~present] = weights[present].mean()
    return weights
