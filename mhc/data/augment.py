"""Training-time image augmentation that knows the tasks (``augment=standard``; ``augment=none``).

Training images only (evaluation and prediction read images through the processor alone,
deterministic), in one of two places (``where``):

* ``loader``: each sample in the loader workers, on ``torchvision.transforms.v2``;
* ``device``: whole batches as tensor ops where the batch is, at the start of the training step:
  per-sample crops, flips and erasing drawn at once, with no per-sample Python. TrivialAugment
  runs in the loader only.

The options:

* ``crop``: ``pad`` (pad by ``padding`` pixels, reflected, then crop back to the size: the small-
  image recipe), ``resized`` (``RandomResizedCrop`` over ``scale`` of the area, as ImageNet
  training), ``auto`` (``pad`` up to 64 pixels a side, else ``resized``) or ``none``;
* ``hflip``: the probability of a horizontal flip;
* ``trivial``: TrivialAugmentWide (Müller and Hutter 2021), one random colour or geometry op;
* ``erasing``: the probability of random erasing (Zhong et al. 2020), after the rest;
* ``hflip_check``: flips only once validation says mirror images keep every head's meaning
  (:mod:`mhc.training.flips`; with ``where=device``).

A horizontal flip can change a label: each task declares its ``hflip`` rule
(:class:`~mhc.tasks.TaskSpec`): invariant, a class map (``top-left`` <-> ``top-right``, applied
to its target and to its allowed set), ``mask`` (the flipped sample's label is left out) or
``skip`` (a sample labelled for that task is not flipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mhc.data.labels import batch_of, sample_of
from mhc.errors import ConfigError
from mhc.tasks import TaskSpec

CROPS = ("none", "auto", "pad", "resized")
PLACES = ("loader", "device")
RATIOS = (3 / 4, 4 / 3)  # the aspect ratios a resized crop draws from (log-uniform), as torchvision's
ERASED_AREA, ERASED_RATIOS = (0.02, 0.33), (0.3, 3.3)  # random erasing's box, as torchvision's
SMALL_IMAGE = 64  # crop=auto pads and crops images up to this side, and resized-crops larger ones


@dataclass
class Augmentation:
    """One training sample's augmentation; see the module docstring for the options."""

    crop: str = "none"
    padding: int = 4
    scale: Sequence[float] = (0.35, 1.0)
    hflip: float = 0.0
    trivial: bool = False
    erasing: float = 0.0
    where: str = "loader"
    hflip_check: bool = False
    tasks: list[TaskSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"augment.crop must be one of {list(CROPS)}, got '{self.crop}'")
        if self.where not in PLACES:
            raise ConfigError(f"augment.where must be one of {list(PLACES)}, got '{self.where}'")
        if self.where == "device" and self.trivial:
            raise ConfigError("augment.trivial (TrivialAugmentWide) runs per sample in the loader; set augment.where=loader")
        if self.hflip_check and self.where != "device":
            raise ConfigError("augment.hflip_check turns flips on during training, on the batches: set augment.where=device")
        for option in ("hflip", "erasing"):
            if not 0.0 <= float(getattr(self, option)) <= 1.0:
                raise ConfigError(f"augment.{option} is a probability in [0, 1], got {getattr(self, option)!r}")
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise ConfigError(f"augment.scale must be [min, max] area fractions in (0, 1], got {list(self.scale)}")
        if int(self.padding) < 0:
            raise ConfigError(f"augment.padding must be >= 0 pixels, got {self.padding}")
        self.flips = {t.name: torch.tensor(t.flipped_indices()) for t in self.tasks if isinstance(t.hflip, dict)}

    @property
    def active(self) -> bool:
        return self.crop != "none" or self.hflip > 0 or self.trivial or self.erasing > 0

    def crop_kind(self, size: Sequence[int]) -> str:
        return self.crop if self.crop != "auto" else ("pad" if max(size) <= SMALL_IMAGE else "resized")

    def pixels(self, size: Sequence[int]) -> Any:
        """The v2 pipeline for everything but the flip, for images of ``size`` ``[H, W]``."""
        from torchvision.transforms import v2

        steps: list[Any] = []
        crop = self.crop_kind(size)
        if crop == "pad":
            steps.append(v2.RandomCrop(list(size), padding=int(self.padding), padding_mode="reflect"))
        elif crop == "resized":
            steps.append(v2.RandomResizedCrop(list(size), scale=tuple(self.scale), antialias=True))
        if self.trivial:
            steps.append(v2.TrivialAugmentWide())
        if self.erasing > 0:
            steps.append(v2.RandomErasing(p=float(self.erasing)))
        return v2.Compose(steps) if steps else v2.Identity()

    def flip(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Flip the sample's image with probability ``hflip``, updating each task's label as it declares."""
        if self.hflip <= 0 or torch.rand(()) >= self.hflip:
            return sample
        labelled = sample.get("label_mask", {})
        if any(t.hflip == "skip" and bool(labelled.get(t.name, False)) for t in self.tasks):
            return sample
        labels = batch_of({key: sample[key] for key in ("targets", "label_mask", "allowed") if key in sample})
        moved = sample_of(flip_batch_labels(labels, torch.ones(1, dtype=torch.bool), self.tasks, self.flips))
        return {**sample, **moved, "image": sample["image"].flip(-1)}

    # -- whole batches on their device (where=device) ----------------------------------------------
    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A training batch augmented as a whole where it is: each sample's crop, flip (its labels
        moved by the task rules) and erasing drawn independently, as the loader would."""
        images = batch["image"]
        count, device = images.shape[0], images.device
        flip = torch.rand(count, device=device) < self.hflip
        labelled = batch.get("label_mask", {})
        for task in self.tasks:  # skip: a sample labelled for the task keeps its orientation
            if task.hflip == "skip" and task.name in labelled:
                flip &= ~labelled[task.name].bool()
        crop = self.crop_kind(images.shape[-2:])
        if crop == "pad" and self.padding > 0:
            images = shifted_crops(images, int(self.padding), flip)
        elif crop == "resized":
            images = resized_crops(images, tuple(self.scale), flip)
        else:
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.erasing > 0:
            images = erase_boxes(images, torch.rand(count, device=device) < self.erasing)
        return flip_batch_labels({**batch, "image": images}, flip, self.tasks, self.flips)


def shifted_crops(images: Tensor, padding: int, flip: Tensor) -> Tensor:
    """Each image [B, C, H, W] reflect-padded by ``padding`` and cropped back at a random offset,
    mirrored where ``flip`` [B]; one gather for the batch (the result is channels-last in memory)."""
    count, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    offsets = torch.randint(0, 2 * padding + 1, (2, count), device=images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    batch = torch.arange(count, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]


def resized_crops(images: Tensor, scale: tuple[float, float], flip: Tensor) -> Tensor:
    """Random-resized crops of each image [B, C, H, W] (area fraction in ``scale``, aspect ratio in
    3/4..4/3, as torchvision's), resampled bilinearly to the same size, mirrored where ``flip``."""
    count, _, height, width = images.shape
    device = images.device
    area = torch.empty(count, device=device).uniform_(*scale)
    log_ratio = torch.empty(count, device=device).uniform_(math.log(RATIOS[0]), math.log(RATIOS[1]))
    crop_w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # fractions of the width and height
    crop_h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(count, device=device) * 2 - 1) * (1 - crop_w)  # the crop stays inside the image
    centre_y = (torch.rand(count, device=device) * 2 - 1) * (1 - crop_h)
    theta = torch.zeros(count, 2, 3, device=device)
    theta[:, 0, 0] = torch.where(flip, -crop_w, crop_w)
    theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = centre_x, crop_h, centre_y
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def erase_boxes(images: Tensor, chosen: Tensor) -> Tensor:
    """Random erasing (value 0, as torchvision's default) of one box per ``chosen`` image [B]."""
    count, _, height, width = images.shape
    device = images.device
    area = torch.empty(count, device=device).uniform_(*ERASED_AREA) * height * width
    log_ratio = torch.empty(count, device=device).uniform_(math.log(ERASED_RATIOS[0]), math.log(ERASED_RATIOS[1]))
    box_h = (area * log_ratio.exp()).sqrt().round().clamp(1, height)
    box_w = (area / log_ratio.exp()).sqrt().round().clamp(1, width)
    top = (torch.rand(count, device=device) * (height - box_h + 1)).floor()
    left = (torch.rand(count, device=device) * (width - box_w + 1)).floor()
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]) & chosen[:, None, None])
    return images.masked_fill(inside[:, None], 0.0)


def flip_batch_labels(batch: dict[str, Any], flip: Tensor, tasks: Sequence[TaskSpec],
                      flips: dict[str, Tensor]) -> dict[str, Any]:
    """``batch`` with the labels of the samples mirrored (``flip`` [B]) moved by their tasks' rules."""
    targets, label_mask = dict(batch["targets"]), dict(batch.get("label_mask", {}))
    allowed = dict(batch.get("allowed", {}))
    for task in tasks:
        if task.hflip == "mask" and task.name in label_mask:
            label_mask[task.name] = label_mask[task.name] & ~flip
        elif task.name in flips:
            flipped = flips[task.name].to(flip.device)
            target = targets[task.name]
            if task.kind == "multiclass":
                moved = flipped[target.clamp(min=0)]
                targets[task.name] = torch.where(flip & (target >= 0), moved, target)
            elif task.kind == "binary":
                targets[task.name] = torch.where(flip & (target >= 0), 1.0 - target, target) if flipped[0] else target
            else:
                targets[task.name] = torch.where(flip[:, None], target[:, torch.argsort(flipped)], target)
            if task.name in allowed:
                allowed[task.name] = torch.where(flip[:, None], allowed[task.name][:, torch.argsort(flipped)], allowed[task.name])
    out = {**batch, "targets": targets, "label_mask": label_mask}
    if allowed:
        out["allowed"] = allowed
    return out


class AugmentedDataset(Dataset):
    """A training split with :class:`Augmentation` applied to each image sample."""

    def __init__(self, dataset: Dataset, augmentation: Augmentation, size: Sequence[int]) -> None:
        self.dataset, self.augmentation = dataset, augmentation
        self.transform = augmentation.pixels(size)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.augmentation.flip(self.dataset[index])
        return {**sample, "image": self.transform(sample["image"])}
