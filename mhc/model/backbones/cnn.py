"""A compact CNN for small images: conv-BN-ReLU stages that halve resolution, then global pooling."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from mhc.model.backbones.base import FEATURE_MAP, Backbone
from mhc.model.backbones.registry import register_backbone


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class CompactCNN(Backbone):
    """Stages of two 3x3 convolutions; each stage after the first starts with stride 2."""

    capabilities = frozenset({FEATURE_MAP})
    convolutional = True
    masked_modeling = ("simmim",)

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), in_chans: int = 3, stem_stride: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_chans, widths[0], stride=stem_stride)]
        for i, width in enumerate(widths):
            prev = widths[max(i - 1, 0)]
            layers += [conv_bn_relu(prev, width, stride=1 if i == 0 else 2), conv_bn_relu(width, width)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along each side (the product of the conv strides)."""
        return math.prod(m.stride[0] for m in self.features.modules() if isinstance(m, nn.Conv2d))

    def forward_map(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D, H / reduction, W / reduction]
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D]
        return self.pool(self.forward_map(x)).flatten(1)


@register_backbone("cnn")
def cnn(widths: Sequence[int] = (32, 64, 128, 128), in_chans: int = 3, stem_stride: int = 1) -> CompactCNN:
    return CompactCNN(widths=tuple(widths), in_chans=in_chans, stem_stride=stem_stride)
