"""Mixup and CutMix for many heads (``augment.mixup``, ``augment.cutmix``), on the training batch.

Each mixed batch pairs every sample with another of the batch (the batch reversed, as timm
does) and draws one ``lam`` for the batch: Mixup (Zhang et al. 2018) blends the two images,
CutMix (Yun et al. 2019) pastes a box of the partner, ``lam`` then being the area left of
the sample's own image. Every head mixes its targets with the same ``lam``:

* multiclass targets become class probabilities ``lam * onehot(a) + (1 - lam) * onehot(b)``;
* binary and multilabel targets are blended the same way (soft BCE targets);
* a head whose label is missing on either sample of a pair is masked for that pair;
* output masks (given by the data, or derived from a parent's label) become the union of the
  two samples' allowed sets, so neither class of the pair is ever masked out.

A mixed batch carries ``soft_targets`` for the losses and its complete output masks in
``allowed``; its ``targets`` are the hard labels of each pair's larger share, for the
training metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from mhc.errors import ConfigError
from mhc.masks import labelled_batch_allowed
from mhc.tasks import TaskSpec


@dataclass
class BatchMixing:
    """Mixup / CutMix of a training batch, as timm's ``Mixup`` (per-batch ``lam``).

    Args:
        mixup: Beta(alpha, alpha) of Mixup's ``lam``; 0 turns Mixup off.
        cutmix: Beta(alpha, alpha) of CutMix's ``lam``; 0 turns CutMix off.
        prob: the probability that a batch is mixed at all.
        switch_prob: with both on, the probability of CutMix rather than Mixup for a batch.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        for option, value in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            if float(value) < 0:
                raise ConfigError(f"augment.{option} is a Beta distribution's alpha, >= 0 (0: off); got {value!r}")
        for option, value in (("mix_prob", self.prob), ("switch_prob", self.switch_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"augment.{option} is a probability in [0, 1], got {value!r}")

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def draw(self) -> tuple[str, float] | None:
        """``(kind, lam)`` for the next batch, or ``None`` when it is not mixed."""
        if not self.active or float(torch.rand(())) >= self.prob:
            return None
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or float(torch.rand(())) < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return ("cutmix" if use_cutmix else "mixup"), lam

    def __call__(self, batch: Mapping[str, Any], tasks: Mapping[str, TaskSpec],
                 hierarchy: Callable[[str], Tensor]) -> Mapping[str, Any]:
        """The mixed batch (or ``batch`` itself when this batch is not mixed); ``hierarchy(name)``
        gives a child task's [parent classes, classes] matrix."""
        if not self.active:
            return batch
        if "image" not in batch:
            raise ConfigError("augment.mixup and augment.cutmix mix images; this model reads tokens (set them to 0)")
        drawn = self.draw()
        if drawn is None:
            return batch
        kind, lam = drawn
        images = batch["image"]
        if kind == "mixup":
            mixed_images = images.lerp(images.flip(0), 1.0 - lam)
        else:
            mixed_images, lam = paste_box(images, lam)
        return mix_labels({**batch, "image": mixed_images}, lam, tasks, hierarchy)


def paste_box(images: Tensor, lam: float) -> tuple[Tensor, float]:
    """CutMix: each image [B, C, H, W] with a random box of area ``1 - lam`` taken from its partner
    (the batch reversed); ``lam`` corrected to the area actually left after clipping the box."""
    height, width = images.shape[-2:]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mix_labels(batch: Mapping[str, Any], lam: float, tasks: Mapping[str, TaskSpec],
               hierarchy: Callable[[str], Tensor]) -> dict[str, Any]:
    """Targets, label masks and output masks of each sample mixed with its partner's (the batch
    reversed) with weight ``lam``; see the module docstring."""
    targets, label_mask = batch["targets"], batch["label_mask"]
    allowed = labelled_batch_allowed(tasks, hierarchy, batch)
    soft, hard = {}, {}
    for name, task in tasks.items():
        target = targets[name]
        if task.kind == "multiclass":
            probs = torch.nn.functional.one_hot(target.long().clamp(min=0), task.num_classes).float()
        else:
            probs = target.float().clamp(min=0)
        soft[name] = probs.lerp(probs.flip(0), 1.0 - lam)
        hard[name] = target if lam >= 0.5 else target.flip(0)
    return {
        **batch,
        "targets": hard,
        "soft_targets": soft,
        "label_mask": {name: mask & mask.flip(0) for name, mask in label_mask.items()},
        "allowed": {name: mask | mask.flip(0) for name, mask in allowed.items()},
    }
