"""From logits to decisions, one way for every runtime.

:class:`OutputDecoder` turns logits into probabilities and class names per task: output masks
(the data's allowed sets, and a child task decoded under its parent's predicted class), softmax
or sigmoids, and the multilabel threshold. :class:`Predictor` adds a processor
(:mod:`mhc.processing.processors`) in front and a function from network input to logits in
between: the network itself (``MultiHeadNet.predict``), an ONNX Runtime session
(``mhc.export.OnnxModel``), or the HTTP service's batcher (``mhc.serve``). ``mhc-predict``
decodes with the same decoder, so all four give the same answer for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mhc.masks import apply_output_mask, hierarchy_matrix
from mhc.processing.processors import Processor
from mhc.tasks import TaskSpec

Logits = Callable[[Tensor], Mapping[str, Tensor]]


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
    def probabilities(self, logits: Mapping[str, Tensor], allowed: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Multiclass: softmax over the allowed classes [B, C]; binary: P(positive) [B];
        multilabel: independent sigmoids [B, C]. A child task is decoded under its parent's
        predicted class; ``allowed`` may add per-sample allowed-class masks [B, C]."""
        allowed = dict(allowed or {})
        probs: dict[str, Tensor] = {}
        for task in self.order:
            out = logits[task.name].float()
            if task.kind == "multiclass":
                mask = allowed.get(task.name)
                if task.parent is not None:
                    hierarchy = self.hierarchies[task.name]
                    if hierarchy.device != out.device:  # moved once, not on every batch
                        hierarchy = self.hierarchies[task.name] = hierarchy.to(out.device)
                    derived = hierarchy[probs[task.parent].argmax(-1)]
                    if mask is None:
                        mask = derived
                    else:  # where the predicted parent contradicts the given set, the data wins
                        both = mask & derived
                        mask = torch.where(both.any(-1, keepdim=True), both, mask)
                probs[task.name] = torch.softmax(apply_output_mask(out, mask), dim=-1)
            elif task.kind == "binary":
                probs[task.name] = torch.sigmoid(out.squeeze(-1))
            else:
                probs[task.name] = torch.sigmoid(out)
        return {t: probs[t] for t in self.tasks}

    def decode(self, probs: Mapping[str, Tensor], threshold: float = 0.5) -> dict[str, TaskPrediction]:
        """Class names from :meth:`probabilities`; a binary task's probabilities become [B, 2]."""
        out: dict[str, TaskPrediction] = {}
        for task in self.tasks.values():
            p = probs[task.name]
            if task.kind == "binary":
                p = torch.stack([1 - p, p], dim=-1)
            if task.kind == "multilabel":
                labels: list[Any] = [[task.classes[j] for j in torch.nonzero(row >= threshold).flatten().tolist()]
                                     for row in p]
            else:
                labels = [task.classes[j] for j in p.argmax(-1).tolist()]
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
    def probabilities(self, inputs: Any, batch_size: int = 64) -> dict[str, Tensor]:
        """Per-task probabilities for raw inputs, in chunks of ``batch_size``, on the CPU."""
        items = self.processor.items(inputs)
        chunks = [self.decoder.probabilities(self.logits(self.batch(items[i : i + batch_size])))
                  for i in range(0, len(items), batch_size)]
        return {name: torch.cat([c[name] for c in chunks]).cpu() for name in self.tasks}

    def batch(self, items: Sequence[Any] | Tensor) -> Tensor:
        batch = self.processor.batch(items)
        return batch if self.device is None else batch.to(self.device)

    def predict(self, inputs: Any, batch_size: int = 64, threshold: float = 0.5) -> dict[str, TaskPrediction]:
        """Class names and probabilities per task for raw inputs (see the processor for what it reads)."""
        return self.decoder.decode(self.probabilities(inputs, batch_size), threshold)
