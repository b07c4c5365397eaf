"""What a training set looks like, read before anything is built: the input kind, the number of
samples, the image size or the texts' length, and each head's labels per class.

``experiment=auto`` (:mod:`mhc.api.recipe`) chooses its backbone, schedule and augmentation from
this. The labels are read the cheap way the data module offers (a manifest's columns, without
decoding an image or fitting a tokenizer: :meth:`TaskDataModule.train_labels`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mhc.data.labels import MISSING
from mhc.tasks import TaskSpec

# Class names that a horizontal flip turns into each other (left/right arrows, "turn left", "L")
MIRRORED_WORD = re.compile(r"(^|[^a-z])(left|right|l|r)([^a-z]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class HeadProfile:
    """One head's training labels: how many samples are labelled, and the rarest class's count
    (a multilabel head's: the rarest class's positives)."""

    name: str
    kind: str
    classes: int
    labelled: int
    rarest: int
    mirrored: bool  # a class name says left or right: a horizontal flip changes its meaning

    @property
    def per_class(self) -> float:
        """Labelled samples per class (positives per class for a multilabel head)."""
        return self.labelled / max(1, self.classes)


@dataclass(frozen=True)
class DataProfile:
    inputs: str  # "image" or "text"
    samples: int  # training samples
    image_size: tuple[int, int] | None
    heads: tuple[HeadProfile, ...]
    words: int | None = None  # texts: the 90th percentile of words per training text

    @property
    def mirrored_heads(self) -> list[str]:
        return [head.name for head in self.heads if head.mirrored]

    @property
    def rarest(self) -> int:
        """The fewest labels any class of any head has in training."""
        return min((head.rarest for head in self.heads), default=0)

    def describe(self) -> str:
        """``text data, 8,000 training samples, 3 heads (multilabel x3; rarest class 9 labels)``."""
        size = f" at {self.image_size[0]}x{self.image_size[1]}" if self.image_size else ""
        size += f" (90% within {self.words:,} words)" if self.words else ""
        kinds = sorted({h.kind for h in self.heads})
        counts = ", ".join(f"{k} x{sum(h.kind == k for h in self.heads)}" for k in kinds)
        return (f"{self.inputs} data, {self.samples:,} training samples{size}, {len(self.heads)} heads "
                f"({counts}; rarest class {self.rarest:,} labels)")


def head_profile(task: TaskSpec, labels: np.ndarray) -> HeadProfile:
    """A head's profile from its encoded training labels (``-1`` where missing)."""
    if task.kind == "multilabel":
        labelled = labels[(labels != MISSING).all(axis=1)] if labels.size else labels
        counts = labelled.sum(axis=0) if len(labelled) else np.zeros(task.num_classes)
        count = len(labelled)
    else:
        present = labels[labels != MISSING]
        counts = np.bincount(present, minlength=task.num_classes)
        count = len(present)
    mirrored = any(MIRRORED_WORD.search(name.replace("_", " ").replace("-", " ")) for name in task.classes)
    return HeadProfile(task.name, task.kind, task.num_classes, int(count), int(np.min(counts)) if len(counts) else 0,
                       bool(mirrored) and task.hflip == "invariant")


def profile_data(datamodule: object) -> DataProfile:
    """The profile of a data module's training split (:meth:`TaskDataModule.train_labels`)."""
    tasks = datamodule.task_specs()  # type: ignore[attr-defined]
    labels = datamodule.train_labels(tasks)  # type: ignore[attr-defined]
    samples = len(next(iter(labels.values()))) if labels else 0
    inputs = datamodule.input_kind()  # type: ignore[attr-defined]
    size = datamodule.processor().size if inputs == "image" else None  # type: ignore[attr-defined]
    words = datamodule.train_words() if inputs == "text" else None  # type: ignore[attr-defined]
    return DataProfile(inputs, samples, tuple(int(s) for s in size) if size else None,
                       tuple(head_profile(task, labels[task.name]) for task in tasks),
                       int(np.percentile(words, 90)) if words is not None and len(words) else None)
