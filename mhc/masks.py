"""Output masks: per-sample sets of allowed classes applied to a head's logits.

Pure tensor functions, shared by the loss, the metrics and prediction so that a masked
class can never be predicted and never receives probability mass.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from mhc.tasks import TaskSpec


def hierarchy_matrix(child: TaskSpec, parent: TaskSpec) -> Tensor:
    """Bool matrix [parent classes, child classes]: which child classes each parent class allows.

    A parent class missing from ``child.allowed_by_parent`` allows every child class.
    """
    matrix = torch.ones(parent.num_classes, child.num_classes, dtype=torch.bool)
    for parent_class, allowed in child.allowed_by_parent.items():
        row = torch.zeros(child.num_classes, dtype=torch.bool)
        row[[child.class_index(c) for c in allowed]] = True
        matrix[parent.class_index(parent_class)] = row
    return matrix


def allowed_from_parent(matrix: Tensor, parent_index: Tensor, parent_known: Tensor | None = None) -> Tensor:
    """Allowed child classes [B, C] for parent class indices [B]; unknown parents allow all."""
    allowed = matrix.to(parent_index.device)[parent_index.clamp(min=0)]
    if parent_known is not None:
        allowed = allowed | ~parent_known.bool().unsqueeze(-1)
    return allowed


def apply_output_mask(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Set the logits of disallowed classes [B, C] to the dtype's lowest finite value.

    Finite (not -inf) keeps log-softmax and its gradient finite; the probability of a
    disallowed class is exactly 0 and argmax never picks one while any class is allowed.
    """
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def under_predicted_parent(derived: Tensor, given: Tensor | None) -> Tensor:
    """The classes a child task may take at prediction time: those its predicted parent allows
    (``derived``), within the data's own set ``given``; where the two contradict, the data wins."""
    if given is None:
        return derived
    both = given & derived
    return torch.where(both.any(-1, keepdim=True), both, given)


def decoding_masks(tasks: Mapping[str, TaskSpec], logits: Mapping[str, Tensor],
                   given: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The allowed-class masks a decoder applies to ``logits``: the data's own (``given``), and a
    child task's under its parent's predicted class (the argmax over the parent's allowed
    classes, which no temperature changes)."""
    given = dict(given or {})
    masks = {name: given[name] for name in tasks if name in given}
    for name, task in tasks.items():
        if task.parent is not None:
            parent = apply_output_mask(logits[task.parent], given.get(task.parent)).argmax(-1)
            derived = hierarchy_matrix(task, tasks[task.parent]).to(parent.device)[parent]
            masks[name] = under_predicted_parent(derived, given.get(name))
    return masks


def batch_allowed(
    tasks: Mapping[str, TaskSpec],
    matrices: Mapping[str, Tensor],
    parent_index: Mapping[str, Tensor],
    parent_known: Mapping[str, Tensor] | None = None,
    given: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Allowed-class masks per task: derived from the parent's class and/or given by the data."""
    allowed: dict[str, Tensor] = {}
    for name, task in tasks.items():
        mask = None
        if task.parent is not None and task.parent in parent_index:
            known = None if parent_known is None else parent_known.get(task.parent)
            mask = allowed_from_parent(matrices[name], parent_index[task.parent], known)
        if given is not None and name in given:
            mask = given[name] if mask is None else mask & given[name]
        if mask is not None:
            allowed[name] = mask
    return allowed


def labelled_batch_allowed(tasks: Mapping[str, TaskSpec], hierarchy: Callable[[str], Tensor],
                           batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """A labelled batch's allowed-class masks: each child task's from its parent's label
    (``hierarchy(name)``: its [parent classes, classes] matrix), and the data's own."""
    matrices = {name: hierarchy(name) for name, t in tasks.items() if t.parent is not None}
    return batch_allowed(tasks, matrices, batch["targets"], batch["label_mask"], batch.get("allowed"))
