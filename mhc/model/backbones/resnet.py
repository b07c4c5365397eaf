"""torchvision ResNets as backbones, with an optional small-image stem (3x3 conv, no max-pool)."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet

from mhc.model.backbones.registry import register_variants


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: pooled features [B, 512 or 2048]."""

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

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, H, W] -> [B, D]
        return self.net(x)


register_variants({arch: {"arch": arch} for arch in ("resnet18", "resnet34", "resnet50")}, ResNetBackbone)
