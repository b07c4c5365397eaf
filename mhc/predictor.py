"""From logits to decisions, one way for every runtime.

:class:`OutputDecoder` turns logits into probabilities and class names per task: output masks
(the data's allowed sets, and a child task decoded under its parent's predicted class), softmax
or sigmoids, and the multilabel threshold. :class:`Predictor` adds a processor
(:mod:`mhc.processing.processors`) in front and a function from network input to logits in
between: the network itself (``MultiHeadNet.predict``), an ONNX Runtime session
(``mhc.export.OnnxModel``), or the HTTP service's batcher (``mhc.serve``). ``mhc-predict``
decodes with the same decoder, so all four give the same answer for the same input.

Test-time augmentation (``tta="flip"``) runs each image batch as it is and mirrored, and the
decoder averages the two views' probabilities per task. A task's view of the mirrored image is
read back through its flip rule (``TaskSpec.hflip``): a class map moves the classes back
(``left`` predicted on the mirror is ``right`` on the image), and a task whose rule is ``mask``
or ``skip`` (its label does not survive a flip) keeps the plain view alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import Tensor

from mhc.calibration import probabilities
from mhc.errors import ConfigError
from mhc.masks import hierarchy_matrix, under_predicted_parent
from mhc.processing.processors import Processor
from mhc.tasks import TaskSpec

Logits = Callable[[Tensor], Mapping[str, Tensor]]
Views = Mapping[str, Union[Tensor, Sequence[Tensor]]]  # per task: logits, or the logits of several views
TTA = ("flip",)  # the test-time augmentations (or None)


def check_tta(tta: str | None) -> None:
    if tta is not None and tta not in TTA:
        raise ConfigError(f"tta must be null or one of {list(TTA)}, got {tta!r}")


def flip_views(tasks: Iterable[TaskSpec], logits: Logits, images: Tensor,
               plain: Mapping[str, Tensor] | None = None) -> dict[str, list[Tensor]]:
    """Each task's logits for ``images`` [B, 3, H, W] and, read back through its flip rule, for
    the mirrored images (``plain``: the logits of ``images`` when already computed)."""
    if not images.is_floating_point() or images.ndim != 4:
        raise ConfigError("tta=flip mirrors images; this model reads tokens")
    plain = logits(images) if plain is None else plain
    mirrored = logits(images.flip(-1))
    views: dict[str, list[Tensor]] = {}
    for task in tasks:
        views[task.name] = [plain[task.name]]
        if task.hflip == "invariant":
            views[task.name].append(mirrored[task.name])
        elif isinstance(task.hflip, dict):  # the classes a mirror exchanges, exchanged back
            flipped = task.flipped_indices()
            out = mirrored[task.name]
            views[task.name].append((-out if flipped[0] else out) if task.kind == "binary" else out[:, flipped])
    return views


@dataclass
class TaskPrediction:
    """One task's predictions for a batch: class names and probabilities [B, C] in ``classes`` order.

    ``labels`` holds one class name per sample, or a list of names per sample for multilabel.
    """

    classes: list[str]
    labels: list[Any]
    probs: Tensor


class OutputDecoder:
    """Probabilities and class names per task from raw logits."""

    def __init__(self, tasks: Iterable[TaskSpec]) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.order = sorted(self.tasks.values(), key=lambda t: t.parent is not None)  # parents first
        self.hierarchies = {t.name: hierarchy_matrix(t, self.tasks[t.parent]) for t in self.tasks.values() if t.parent}

    @torch.no_grad()
    def probabilities(self, logits: Views, allowed: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Multiclass: softmax over the allowed classes [B, C]; binary: P(positive) [B];
        multilabel: independent sigmoids [B, C]. A child task is decoded under its parent's
        predicted class; ``allowed`` may add per-sample allowed-class masks [B, C]. A task given
        a list of logits (views of the same inputs) gets the mean of their probabilities."""
        allowed = dict(allowed or {})
        probs: dict[str, Tensor] = {}
        for task in self.order:
            views = logits[task.name]
            if isinstance(views, Tensor):
                probs[task.name] = self.task_probabilities(task, views, allowed.get(task.name), probs)
            else:
                probs[task.name] = torch.stack([self.task_probabilities(task, v, allowed.get(task.name), probs)
                                                for v in views]).mean(0)
        return {t: probs[t] for t in self.tasks}

    def task_probabilities(self, task: TaskSpec, logits: Tensor, mask: Tensor | None, probs: Mapping[str, Tensor]) -> Tensor:
        """One task's probabilities from its logits, under the allowed set ``mask`` [B, C] and, for a
        child task, its parent's predicted class (the parent's entry of ``probs``)."""
        if task.parent is not None:  # a multiclass child: under its parent's predicted class
            hierarchy = self.hierarchies[task.name]
            if hierarchy.device != logits.device:  # moved once, not on every batch
                hierarchy = self.hierarchies[task.name] = hierarchy.to(logits.device)
            mask = under_predicted_parent(hierarchy[probs[task.parent].argmax(-1)], mask)
        return probabilities(task, logits, mask)  # calibrated, masked, then softmax or sigmoid

    def decode(self, probs: Mapping[str, Tensor], threshold: float | None = None,
               min_confidence: float | None = None) -> dict[str, TaskPrediction]:
        """Class names from :meth:`probabilities`; a binary task's probabilities become [B, 2]. A
        binary or multilabel output is predicted at or above its task's threshold
        (:meth:`TaskSpec.decision_thresholds`), or ``threshold`` for every one when given. A
        multiclass or binary head abstains (label ``None``) where its top probability is under
        its task's ``min_confidence``, or ``min_confidence`` for every such head when given."""
        out: dict[str, TaskPrediction] = {}
        for task in self.tasks.values():
            p = probs[task.name]
            if task.kind != "multiclass":
                cut = p.new_tensor([threshold] * task.num_outputs if threshold is not None else task.decision_thresholds())
            if task.kind == "binary":
                labels: list[Any] = [task.classes[int(v)] for v in (p >= cut[0]).tolist()]
                p = torch.stack([1 - p, p], dim=-1)
            elif task.kind == "multilabel":
                labels = [[task.classes[j] for j in torch.nonzero(row >= cut).flatten().tolist()] for row in p]
            else:
                labels = [task.classes[j] for j in p.argmax(-1).tolist()]
            floor = task.min_confidence if min_confidence is None or task.kind == "multilabel" else min_confidence
            if floor > 0:
                unsure = (p.max(-1).values < floor).tolist()
                labels = [None if no else label for label, no in zip(labels, unsure)]
            out[task.name] = TaskPrediction(classes=list(task.classes), labels=labels, probs=p)
        return out


class Predictor:
    """``predict(inputs)``: the processor, ``logits`` (network input -> logits per task), the decoder.

    Args:
        tasks: the model's tasks.
        processor: turns raw inputs into network input.
        logits: runs the model on a batch of network input.
        device: where network input goes before ``logits`` (``None``: the CPU).
    """

    def __init__(self, tasks: Iterable[TaskSpec], processor: Processor, logits: Logits,
                 device: torch.device | str | None = None) -> None:
        self.decoder = OutputDecoder(tasks)
        self.processor = processor
        self.logits = logits
        self.device = device

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self.decoder.tasks

    @torch.no_grad()
    def probabilities(self, inputs: Any, batch_size: int = 64, tta: str | None = None) -> dict[str, Tensor]:
        """Per-task probabilities for raw inputs, in chunks of ``batch_size``, on the CPU; ``tta="flip"``
        averages them over each image and its mirror (see the module docstring)."""
        check_tta(tta)
        items = self.processor.items(inputs)
        chunks = [self.decoder.probabilities(self.views(self.batch(items[i : i + batch_size]), tta))
                  for i in range(0, len(items), batch_size)]
        return {name: torch.cat([c[name] for c in chunks]).cpu() for name in self.tasks}

    def views(self, batch: Tensor, tta: str | None = None) -> Views:
        """The logits of a batch, or with ``tta="flip"`` each task's logits of its views."""
        return self.logits(batch) if tta is None else flip_views(self.tasks.values(), self.logits, batch)

    def batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        batch = self.processor.batch(items)
        return batch if self.device is None else batch.to(self.device)

    def predict(self, inputs: Any, batch_size: int = 64, threshold: float | None = None,
                tta: str | None = None, min_confidence: float | None = None) -> dict[str, TaskPrediction]:
        """Class names and probabilities per task for raw inputs (see the processor for what it
        reads); ``threshold`` and ``min_confidence`` override the tasks' own (:meth:`OutputDecoder.decode`)."""
        return self.decoder.decode(self.probabilities(inputs, batch_size, tta), threshold, min_confidence)
