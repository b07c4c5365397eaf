"""torchvision ResNets as backbones, with an optional small-image stem (3x3 conv, no max-pool).

``weights`` takes torchvision's published weights by their enum name (``IMAGENET1K_V2``, or
``DEFAULT``), downloaded or read from torch's cache as torchvision does, or a local state-dict
file of this backbone. Published weights bring their normalisation, which the processor takes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights, resnet

from mhc.errors import ConfigError, first_line
from mhc.model.backbones.base import FEATURE_MAP, Backbone
from mhc.model.backbones.registry import load_backbone_weights, register_variants


def published_weights(arch: str, weights: str | None) -> Any:
    """torchvision's weights enum member named ``weights`` for ``arch``, or ``None`` for a local
    file (or none); an unknown name that is no file either is a :class:`ConfigError`."""
    if not weights or Path(str(weights)).is_file():
        return None
    enum = get_model_weights(arch)
    name = str(weights).rsplit(".", 1)[-1]  # ResNet50_Weights.IMAGENET1K_V2 or IMAGENET1K_V2
    if name == "DEFAULT" or name in enum.__members__:
        return enum[name]
    raise ConfigError(f"backbone.weights: '{weights}' is neither a file nor one of {arch}'s torchvision weights "
                      f"{list(enum.__members__)}")


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier: pooled features [B, 512 or 2048]."""

    capabilities = frozenset({FEATURE_MAP})
    convolutional = True
    masked_modeling = ("simmim",)
    own_weights = ("weights",)

    def __init__(self, arch: str, small_input: bool = False, in_chans: int = 3, weights: str | None = None) -> None:
        super().__init__()
        # Published weights load into torchvision's network; a new stem below starts afresh.
        published = published_weights(arch, weights)
        try:
            net = getattr(resnet, arch)(weights=published)
        except (OSError, RuntimeError) as err:  # the download (URLError is an OSError) or a corrupt cached file
            raise ConfigError(f"backbone.weights: torchvision could not load {published} ({first_line(err)}); without a "
                              "network, give a local state-dict file: backbone.weights=path/to/weights.pt") from None
        if small_input:  # CIFAR-style stem keeps resolution for 32-64 px images
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        if weights and published is None:  # a local state-dict file
            load_backbone_weights(self, weights)

    @classmethod
    def processing(cls, arch: str = "resnet18", weights: str | None = None, **options: Any) -> dict[str, Any]:
        """Published weights' normalisation (torchvision's transforms for them)."""
        published = published_weights(arch, weights)
        if published is None:
            return {}
        transforms = published.transforms()
        return {"mean": list(transforms.mean), "std": list(transforms.std)}

    def parameter_depths(self) -> dict[str, int]:
        """The stem 0, ``layer1`` to ``layer4`` 1 to 4."""
        return {name: int(name.split(".")[1][5:]) if name.startswith("net.layer") else 0
                for name, _ in self.named_parameters()}

    @property
    def stages(self) -> tuple[nn.Module, ...]:
        return (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4)

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along each side: 32, or 8 with ``small_input``."""
        stem = self.net.conv1.stride[0]
        if isinstance(self.net.maxpool, nn.MaxPool2d):
            pool_stride = self.net.maxpool.stride
            stem *= pool_stride if isinstance(pool_stride, int) else pool_stride[0]
        return stem * math.prod(stage[0].stride for stage in self.stages)

    def forward_map(self, x: Tensor) -> Tensor:  # x: [B, C, H, W] -> [B, D, H / reduction, W / reduction]
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, H, W] -> [B, D]; torchvision's own order of operations
        return torch.flatten(self.net.avgpool(self.forward_map(x)), 1)


register_variants({arch: {"arch": arch} for arch in ("resnet18", "resnet34", "resnet50")}, ResNetBackbone)
