"""CNNs for small images: a compact CNN of conv-BN-ReLU stages that halve resolution, the
ResNet-9 of Page's DAWNBench CIFAR-10 record, and the network of Jordan's airbench (2024), the
fastest known CIFAR-10 trainer."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

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


def conv_pool_bn(in_ch: int, out_ch: int, pool: bool = False,
                 activation: Callable[[], nn.Module] = partial(nn.ReLU, inplace=True)) -> list[nn.Module]:
    """3x3 convolution (no bias), an optional 2x2 max-pool, batch norm and ``activation``: the unit
    of ResNet-9 and of airbench."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(out_ch), activation()]


def conv_pool_bn_relu(in_ch: int, out_ch: int, pool: bool = False) -> nn.Sequential:
    return nn.Sequential(*conv_pool_bn(in_ch, out_ch, pool))


class Residual(nn.Sequential):
    """``x + f(x)`` for ``f``, two conv-BN-ReLU layers of the same width."""

    def __init__(self, width: int) -> None:
        super().__init__(conv_pool_bn_relu(width, width), conv_pool_bn_relu(width, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


class ResNet9(Backbone):
    """ResNet-9 (Page 2018): a stride-1 stem, three stages that each convolve then max-pool by 2,
    residual pairs after the first and last, and global pooling (``pool``: ``max`` as Page, or ``avg``).

    ``widths``: the stem and the three stages (Page: ``[64, 128, 256, 512]``); a quarter of
    that trains on 32-pixel images on two CPU cores in minutes (``experiment=cifar10``).
    """

    capabilities = frozenset({FEATURE_MAP})
    convolutional = True
    masked_modeling = ("simmim",)
    reduction = 8

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), in_chans: int = 3, pool: str = "max") -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"resnet9 widths are [stem, stage 1, stage 2, stage 3], got {list(widths)}")
        if pool not in ("max", "avg"):
            raise ValueError(f"resnet9 pool must be max or avg, got {pool!r}")
        stem, first, second, third = (int(w) for w in widths)
        self.stem = conv_pool_bn_relu(in_chans, stem)
        self.stages = nn.Sequential(
            nn.Sequential(conv_pool_bn_relu(stem, first, pool=True), Residual(first)),
            conv_pool_bn_relu(first, second, pool=True),
            nn.Sequential(conv_pool_bn_relu(second, third, pool=True), Residual(third)),
        )
        self.global_pool = pool
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.num_features = third

    def forward_map(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D, H / 8, W / 8]
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D]
        return self.pool(self.forward_map(x)).flatten(1)


@register_backbone("resnet9")
def resnet9(widths: Sequence[int] = (64, 128, 256, 512), in_chans: int = 3, pool: str = "max") -> ResNet9:
    return ResNet9(widths=tuple(widths), in_chans=in_chans, pool=pool)


class AirbenchNet(Backbone):
    """The airbench network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"): a 2x2 stem
    convolution, three blocks of conv, max-pool by 2, BN, GELU, conv, BN, GELU, and global max
    pooling. Here the stem is learned and keeps the image size (airbench freezes an unpadded
    whitening stem fitted to the data), so the network is an ordinary backbone of reduction 8.

    ``widths``: the three blocks (airbench94: ``[64, 256, 256]``); ``stem``: the stem's channels.
    """

    capabilities = frozenset({FEATURE_MAP})
    convolutional = True
    masked_modeling = ("simmim",)
    global_pool = "max"
    reduction = 8

    def __init__(self, widths: Sequence[int] = (64, 256, 256), stem: int = 24, in_chans: int = 3) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"airbench widths are its three blocks, got {list(widths)}")
        # the 2x2 stem keeps the size: one row and column of zeros after the image, as padding="same"
        layers: list[nn.Module] = [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(in_chans, stem, 2), nn.GELU()]
        previous = stem
        for width in widths:
            layers += [nn.Sequential(*conv_pool_bn(previous, int(width), pool=True, activation=nn.GELU),
                                     *conv_pool_bn(int(width), int(width), activation=nn.GELU))]
            previous = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = previous

    def forward_map(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D, H / 8, W / 8]
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, 3, H, W] -> [B, D]
        return self.pool(self.forward_map(x)).flatten(1)


@register_backbone("airbench")
def airbench(widths: Sequence[int] = (64, 256, 256), stem: int = 24, in_chans: int = 3) -> AirbenchNet:
    return AirbenchNet(widths=tuple(widths), stem=stem, in_chans=in_chans)
