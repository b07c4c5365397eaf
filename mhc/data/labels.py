"""Encoded labels shared by every data source, their validation, and the sample format.

Labels are stored per task as integer arrays where ``-1`` means "missing":
multiclass and binary ``[N]`` (class index), multilabel ``[N, C]`` (0/1, a row of -1 when
missing). Allowed-class masks given by the data are bool ``[N, C]``.

A sample (and, after default collation, a batch) is a dict::

    {"image": float [3, H, W] in [0, 1],   # or "tokens": long [L], 0 = padding
     "targets": {task: long [] | float [] | float [C]},
     "label_mask": {task: bool []},
     "allowed": {task: bool [C]}}        # only tasks with data-given output masks
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mhc.errors import DataError
from mhc.masks import hierarchy_matrix
from mhc.tasks import TaskSpec

MISSING = -1


def batch_inputs(batch: Mapping[str, Any]) -> torch.Tensor:
    """The network input of a sample or batch: its ``tokens`` if it has them, else its ``image``."""
    return batch["tokens"] if "tokens" in batch else batch["image"]


def label_present(task: TaskSpec, labels: np.ndarray) -> np.ndarray:
    """Bool [N]: which samples carry a label for ``task``."""
    return labels[:, 0] != MISSING if task.kind == "multilabel" else labels != MISSING


def validate_labels(
    tasks: Sequence[TaskSpec],
    labels: Mapping[str, np.ndarray],
    source: str,
    sample_names: Sequence[str] | None = None,
    allowed: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Check every task's labels before they reach a loss or a metric.

    Raises a :class:`DataError` naming ``source``, the task and the first bad sample when an
    unmasked task misses a label, a label is outside the task's classes, or a sample's own
    label is excluded by its allowed set.
    """

    def name(i: int) -> str:
        return sample_names[i] if sample_names is not None else f"sample {i}"

    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if task.name not in labels:
            raise DataError(f"{source}: no labels for task '{task.name}'")
        values = labels[task.name]
        present = label_present(task, values)
        if not task.masked and not present.all():
            i = int(np.flatnonzero(~present)[0])
            raise DataError(
                f"{source}: {name(i)} has no label for unmasked task '{task.name}'; "
                f"label it or declare the task masked (tasks.{task.name}.masked=true)"
            )
        if task.kind == "multilabel":
            bad = present & ((values < 0) | (values > 1)).any(axis=1)
            expected = "0/1 per class"
        else:
            limit = 2 if task.kind == "binary" else task.num_classes
            bad = present & ((values < 0) | (values >= limit))
            expected = f"a class index in [0, {limit})"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: {name(i)} has label {values[i].tolist()} for task '{task.name}'; expected {expected}")
        parent = by_name.get(task.parent or "")
        if parent is not None:
            parent_values = labels[parent.name]
            both = present & (parent_values != MISSING)
            fits = hierarchy_matrix(task, parent).numpy()[parent_values.clip(min=0), values.clip(min=0)]
            if (both & ~fits).any():
                i = int(np.flatnonzero(both & ~fits)[0])
                raise DataError(
                    f"{source}: {name(i)} has label '{task.classes[values[i]]}' for task '{task.name}', which is not "
                    f"allowed under {parent.name}='{parent.classes[parent_values[i]]}'"
                )
        if allowed is not None and task.name in allowed and task.kind == "multiclass":
            own = allowed[task.name][np.arange(len(values)), values.clip(min=0)]
            excluded = present & ~own
            if excluded.any():
                i = int(np.flatnonzero(excluded)[0])
                raise DataError(
                    f"{source}: {name(i)} has label '{task.classes[values[i]]}' for task '{task.name}' "
                    f"but its allowed set excludes it"
                )


def encode_sample(tasks: Sequence[TaskSpec], labels: Mapping[str, np.ndarray], index: int) -> tuple[dict, dict]:
    """Targets and label mask of one sample, as tensors ready for collation."""
    targets: dict[str, Tensor] = {}
    label_mask: dict[str, Tensor] = {}
    for task in tasks:
        value = labels[task.name][index]
        if task.kind == "multilabel":
            present = bool(value[0] != MISSING)
            targets[task.name] = torch.from_numpy(np.clip(value, 0, 1).astype(np.float32))
        elif task.kind == "binary":
            present = bool(value != MISSING)
            targets[task.name] = torch.tensor(float(max(value, 0)))
        else:
            present = bool(value != MISSING)
            targets[task.name] = torch.tensor(int(max(value, 0)), dtype=torch.long)
        label_mask[task.name] = torch.tensor(present)
    return targets, label_mask


class ArrayDataset(torch.utils.data.Dataset):
    """In-memory images uint8 [N, H, W, 3] with encoded labels; the generated and torchvision sets use it."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Mapping[str, np.ndarray],
        tasks: Sequence[TaskSpec],
        allowed: Mapping[str, np.ndarray] | None = None,
        source: str = "data",
    ) -> None:
        validate_labels(tasks, labels, source, allowed=allowed)
        self.images = images
        self.labels = dict(labels)
        self.tasks = list(tasks)
        self.allowed = dict(allowed or {})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1).float().div_(255)
        targets, label_mask = encode_sample(self.tasks, self.labels, index)
        sample: dict[str, Any] = {"image": image, "targets": targets, "label_mask": label_mask}
        if self.allowed:
            sample["allowed"] = {t: torch.from_numpy(m[index]) for t, m in self.allowed.items()}
        return sample
