"""torchvision ResNets as backbones, with an optional small-image stem (3x3 conv, no max-pool)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models import resnet

from mhc.model.backbones.base import FEATURE_MAP, Backbone
from mhc.model.backbones.registry import register_variants


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier: pooled features [B, 512 or 2048]."""

    capabilities = frozenset({FEATURE_MAP})
    convolutional = True
    masked_modeling = ("simmim",)

    def __init__(self, arch: str, small_input: bool = False, in_chans: int = 3) -> None:
        super().__init__()
        net = getattr(resnet, arch)(weights=None)  # random init; local weights load separately
        if small_input:  # CIFAR-style stem keeps resolution for 32-64 px images
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

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
