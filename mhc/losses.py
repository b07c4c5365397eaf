"""Per-task losses with label masks and output masks.

Every loss is computed per sample, then averaged over the labelled samples only, so the
masked loss equals the loss of the labelled subset, and a batch without labels for a task
contributes exactly zero (with zero gradient, never NaN).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mhc.masks import apply_output_mask, labelled_batch_allowed
from mhc.tasks import TaskSpec


def weighted_mean(weighted: Tensor, weight: Tensor, label_mask: Tensor | None = None) -> Tensor:
    """``sum(weighted) / sum(weight)`` over the samples where ``label_mask`` [B] is true.

    ``weighted`` [B] holds each sample's loss already multiplied by its weight [B]. With no
    labelled sample (or zero total weight) the result is exactly 0 with zero gradient.
    """
    if label_mask is not None:
        keep = label_mask.to(weighted.dtype)
        weighted, weight = weighted * keep, weight * keep
    total = weight.sum()
    # where() rather than division by a clamped total keeps the empty case exactly 0 with 0 grad.
    return torch.where(total > 0, weighted.sum() / total.clamp(min=torch.finfo(total.dtype).tiny), total * 0)


def multiclass_loss(
    task: TaskSpec, logits: Tensor, target: Tensor, label_mask: Tensor | None = None, allowed: Tensor | None = None
) -> Tensor:
    """Cross-entropy (label smoothing, class weights) or focal loss over the allowed classes.

    logits: [B, C]; target: [B] class indices, or [B, C] class probabilities (mixed samples);
    allowed: [B, C] bool. Label smoothing spreads its mass over the allowed classes only, so
    masked classes never receive target mass. With probabilities ``q``, a sample's loss is
    ``sum_c q_c w_c loss_c`` and its weight ``sum_c q_c w_c`` (class weights ``w``): for a
    one-hot ``q`` exactly the loss and weight of its class.
    """
    log_probs = F.log_softmax(apply_output_mask(logits.float(), allowed), dim=-1)
    if target.is_floating_point() and target.ndim == 2:
        probs = target.to(log_probs.dtype)
    else:
        probs = F.one_hot(target.long().clamp(min=0), log_probs.shape[-1]).to(log_probs.dtype)
    nll = torch.where(probs > 0, -log_probs, torch.zeros_like(log_probs))  # [B, C]; masked classes carry no mass
    class_weights = None if task.class_weights is None else log_probs.new_tensor(task.class_weights)
    weighted_probs = probs if class_weights is None else probs * class_weights
    sample_weight = weighted_probs.sum(-1)
    if task.loss == "focal":
        weighted = (weighted_probs * (1.0 - log_probs.exp()).pow(task.focal_gamma) * nll).sum(-1)
    else:
        weighted = (weighted_probs * nll).sum(-1)
        if task.label_smoothing > 0:  # torch's convention: smoothing term weighted per class
            allowed_f = torch.ones_like(log_probs) if allowed is None else allowed.to(log_probs.dtype)
            safe = torch.where(allowed_f > 0, log_probs, torch.zeros_like(log_probs))
            per_class = safe if class_weights is None else safe * class_weights
            smooth = -(per_class * allowed_f).sum(-1) / allowed_f.sum(-1)
            weighted = (1.0 - task.label_smoothing) * weighted + task.label_smoothing * smooth
    return weighted_mean(weighted, sample_weight, label_mask)


def sigmoid_loss(task: TaskSpec, logits: Tensor, target: Tensor, label_mask: Tensor | None = None) -> Tensor:
    """BCE-with-logits (pos_weight) or sigmoid focal loss, for binary [B] / [B, 1] and multilabel
    [B, C]: a sample's loss is the mean or (``label_reduction=sum``) the sum over its labels."""
    logits = logits.float().reshape(target.shape[0], -1)
    target = target.float().reshape(logits.shape)
    pos_weight = None if task.pos_weight is None else logits.new_tensor(task.pos_weight)
    per_element = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    if task.loss == "focal":
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)
        per_element = (1.0 - p_true).pow(task.focal_gamma) * per_element
    per_sample = per_element.sum(dim=1) if task.label_reduction == "sum" else per_element.mean(dim=1)
    return weighted_mean(per_sample, torch.ones_like(per_sample), label_mask)


def task_loss(
    task: TaskSpec, logits: Tensor, target: Tensor, label_mask: Tensor | None = None, allowed: Tensor | None = None
) -> Tensor:
    """The loss of one head on one batch, averaged over the samples labelled for ``task``."""
    if task.kind == "multiclass":
        return multiclass_loss(task, logits, target, label_mask, allowed)
    return sigmoid_loss(task, logits, target, label_mask)


def batch_losses(
    tasks: Mapping[str, TaskSpec], hierarchy: Callable[[str], Tensor], logits: Mapping[str, Tensor], batch: Mapping[str, Any]
) -> dict[str, Tensor]:
    """Every head's loss on a batch, with output masks from the parents' labels and the data.

    ``hierarchy(name)`` gives a child task's [parent classes, classes] matrix (see
    ``MultiHeadNet.hierarchy``).
    """
    if "soft_targets" in batch:  # a mixed batch (mhc.data.mixing) carries its complete output masks
        targets, allowed = batch["soft_targets"], dict(batch.get("allowed") or {})
    else:
        targets, allowed = batch["targets"], labelled_batch_allowed(tasks, hierarchy, batch)
    return {
        name: task_loss(task, logits[name], targets[name], batch["label_mask"][name], allowed.get(name))
        for name, task in tasks.items()
    }
