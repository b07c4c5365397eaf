"""Training-time image augmentation that knows the tasks (``augment=standard``; ``augment=none``).

Built on ``torchvision.transforms.v2``, applied to each training sample in the loader workers
(evaluation and prediction read images through the processor alone, deterministic):

* ``crop``: ``pad`` (pad by ``padding`` pixels, reflected, then crop back to the size: the small-
  image recipe), ``resized`` (``RandomResizedCrop`` over ``scale`` of the area, as ImageNet
  training), ``auto`` (``pad`` up to 64 pixels a side, else ``resized``) or ``none``;
* ``hflip``: the probability of a horizontal flip;
* ``trivial``: TrivialAugmentWide (Müller and Hutter 2021), one random colour or geometry op;
* ``erasing``: the probability of random erasing (Zhong et al. 2020), after the rest.

A horizontal flip can change a label: each task declares its ``hflip`` rule
(:class:`~mhc.tasks.TaskSpec`): invariant, a class map (``top-left`` <-> ``top-right``, applied
to its target and to its allowed set), ``mask`` (the flipped sample's label is left out) or
``skip`` (a sample labelled for that task is not flipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from mhc.errors import ConfigError
from mhc.tasks import TaskSpec

CROPS = ("none", "auto", "pad", "resized")
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
    tasks: list[TaskSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"augment.crop must be one of {list(CROPS)}, got '{self.crop}'")
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

    def pixels(self, size: Sequence[int]) -> Any:
        """The v2 pipeline for everything but the flip, for images of ``size`` ``[H, W]``."""
        from torchvision.transforms import v2

        steps: list[Any] = []
        crop = self.crop if self.crop != "auto" else ("pad" if max(size) <= SMALL_IMAGE else "resized")
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
        sample = {**sample, "image": sample["image"].flip(-1)}
        for task in self.tasks:
            if task.hflip == "mask" and task.name in labelled:
                sample["label_mask"] = {**sample["label_mask"], task.name: torch.zeros((), dtype=torch.bool)}
            elif task.name in self.flips:
                sample = flip_labels(sample, task, self.flips[task.name])
        return sample


def flip_labels(sample: dict[str, Any], task: TaskSpec, flipped: torch.Tensor) -> dict[str, Any]:
    """``sample`` with ``task``'s target and allowed set moved to the flipped classes."""
    targets = dict(sample["targets"])
    target = targets[task.name]
    if task.kind == "multiclass":
        targets[task.name] = flipped[target] if int(target) >= 0 else target
    elif task.kind == "binary":
        targets[task.name] = target if flipped[0] == 0 else 1.0 - target
    else:  # multilabel: class c is present after the flip where its image was
        targets[task.name] = target[torch.argsort(flipped)]
    sample = {**sample, "targets": targets}
    if task.name in sample.get("allowed", {}):
        allowed = sample["allowed"][task.name]
        sample["allowed"] = {**sample["allowed"], task.name: allowed[torch.argsort(flipped)]}
    return sample


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
