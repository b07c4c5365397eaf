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


def encode_batch(tasks: Sequence[TaskSpec], labels: Mapping[str, np.ndarray], indices: Sequence[int]) -> tuple[dict, dict]:
    """Targets and label masks of the samples at ``indices``, collated: class indices (long [B]),
    binary targets (float [B]), multilabel targets (float [B, C]) and label masks (bool [B])."""
    targets: dict[str, Tensor] = {}
    label_mask: dict[str, Tensor] = {}
    for task in tasks:
        values = np.asarray(labels[task.name])[np.asarray(indices, dtype=np.int64)]
        label_mask[task.name] = torch.from_numpy(label_present(task, values))
        dtype = np.int64 if task.kind == "multiclass" else np.float32
        targets[task.name] = torch.from_numpy(np.clip(values, 0, 1 if task.kind != "multiclass" else None).astype(dtype))
    return targets, label_mask


def sample_of(batch: Mapping[str, Any], row: int = 0) -> dict[str, Any]:
    """Row ``row`` of a collated batch: what ``__getitem__`` gives, so that one code path builds
    both a sample and a whole batch (a dataset's ``gather``)."""
    return {key: sample_of(value, row) if isinstance(value, Mapping) else value[row] for key, value in batch.items()}


def unlabelled(sample: Mapping[str, Any]) -> dict[str, Any]:
    """A sample (or batch) with every label masked: filler that adds nothing to losses or metrics."""
    return {**sample, "label_mask": {name: torch.zeros_like(m) for name, m in sample["label_mask"].items()}}


def batch_of(sample: Mapping[str, Any]) -> dict[str, Any]:
    """``sample`` as a batch of one (the inverse of :func:`sample_of`)."""
    return {key: batch_of(value) if isinstance(value, Mapping) else value.unsqueeze(0) for key, value in sample.items()}


class GatheredBatches(torch.utils.data.Dataset):
    """``dataset`` (or a ``Subset`` of it) for a DataLoader that fetches whole batches with the
    dataset's ``gather(indices)``: one gather of the pixels, tokens and labels per batch rather
    than a sample at a time and a collation (30 ms against 0.6 ms for 256 CIFAR samples). Its
    loader's ``collate_fn`` is :func:`collate`."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        inner = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
        self.rows = list(dataset.indices) if isinstance(dataset, torch.utils.data.Subset) else None
        self.gather = inner.gather  # type: ignore[union-attr]

    @staticmethod
    def supported(dataset: torch.utils.data.Dataset) -> bool:
        inner = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
        return callable(getattr(inner, "gather", None))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # the loader's dataset reads as the split's (tokens, inputs, ...)
        if name in ("dataset", "rows", "gather"):  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.gather(indices if self.rows is None else [self.rows[i] for i in indices])


def collate(samples: Any) -> Any:
    """``default_collate``, passing on a batch gathered whole (:class:`GatheredBatches`)."""
    return samples if isinstance(samples, Mapping) else torch.utils.data.default_collate(samples)


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

    def gather(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples at ``indices``, collated in one gather (:class:`~mhc.data.labels.GatheredBatches`)."""
        rows = np.asarray(indices, dtype=np.int64)
        # an array, or an object indexable like one a row at a time (lazily read files)
        pixels = self.images[rows] if isinstance(self.images, np.ndarray) else np.stack([self.images[i] for i in rows])
        images = torch.from_numpy(np.ascontiguousarray(pixels))
        batch: dict[str, Any] = {"image": images.permute(0, 3, 1, 2).float().div_(255)}
        batch["targets"], batch["label_mask"] = encode_batch(self.tasks, self.labels, indices)
        if self.allowed:
            batch["allowed"] = {t: torch.from_numpy(m[rows]) for t, m in self.allowed.items()}
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return sample_of(self.gather([index]))
