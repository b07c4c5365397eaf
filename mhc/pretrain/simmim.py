"""Masked image modeling for the CNN backbones (Xie et al. 2022, "SimMIM: A Simple Framework
for Masked Image Modeling").

A random 60% of each image's patches is hidden; hidden pixels are replaced by a learned mask
token (one value per channel) and the whole image goes through the backbone, as convolutions
need a full grid. A linear head (a 1x1 convolution and a pixel shuffle) turns every
feature-map cell back into its ``reduction x reduction`` pixels; the loss is the L1 distance
to the original (normalised) pixels, on hidden pixels only.

    objective = create_objective("simmim", create_backbone("cnn"), mask_ratio=0.6)
    out = objective(images)          # images [B, 3, H, W], H and W multiples of patch_size
    out.mask                         # bool [B, 1, H, W], True on hidden pixels
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc.errors import ConfigError
from mhc.pretrain.base import PretrainOutput, register_objective, require_fit
from mhc.pretrain.mae import masked_mean
from mhc.pretrain.masking import random_patch_mask


def masked_l1(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the hidden pixels and all channels.

    prediction, target: [B, C, H, W]; mask: bool [B, 1, H, W], True where hidden. 0 when
    nothing is hidden.
    """
    per_pixel = (prediction - target).abs().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return masked_mean(per_pixel, mask)


@register_objective("simmim")
class SimMIM(nn.Module):
    """Wraps a CNN backbone with ``forward_map`` and ``reduction`` (``cnn``, ``resnet*``) with a
    linear reconstruction head used only for pretraining.

    Args:
        mask_ratio: fraction of patches hidden per sample (exact: ``round(N * ratio)``).
        patch_size: side of a hidden patch in pixels; a multiple of the backbone's
            ``reduction`` (its default), so every feature-map cell is either hidden or visible.
        in_chans: image channels, the size of the mask token and of each predicted pixel.
    """

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.6, patch_size: int | None = None,
                 in_chans: int = 3) -> None:
        super().__init__()
        require_fit(backbone, "simmim", "a CNN backbone (cnn, resnet*)", "use 'mae' for vit_* and 'masked_tokens' for seq_*")
        reduction = backbone.reduction
        patch_size = reduction if patch_size is None else patch_size
        if not isinstance(patch_size, int) or patch_size <= 0 or patch_size % reduction:
            raise ConfigError(
                f"simmim: patch_size must be a positive multiple of the backbone's reduction {reduction} "
                f"(pixels per feature-map cell), got {patch_size!r}"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"simmim: mask_ratio must be in (0, 1), got {mask_ratio}")
        self.backbone = backbone
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.mask_token = nn.Parameter(torch.zeros(1, in_chans, 1, 1))  # zeros: the data set's mean colour
        self.head = nn.Sequential(
            nn.Conv2d(backbone.num_features, reduction**2 * in_chans, kernel_size=1),
            nn.PixelShuffle(reduction),
        )

    def patch_grid(self, images: Tensor) -> tuple[int, int]:
        """(rows, columns) of mask patches; the image must have ``in_chans`` channels and sides
        divisible by ``patch_size``."""
        _, channels, height, width = images.shape
        if channels != self.in_chans or height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"simmim: images must have {self.in_chans} channels and sides divisible by patch_size "
                f"{self.patch_size}, got {channels}x{height}x{width}"
            )
        return height // self.patch_size, width // self.patch_size

    def random_masking(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """bool [B, 1, H, W]: exactly ``round(N * mask_ratio)`` of the N patches hidden per sample."""
        rows, cols = self.patch_grid(images)
        hidden = random_patch_mask(len(images), rows * cols, self.mask_ratio, images.device, generator).mask
        hidden = hidden.reshape(-1, 1, rows, cols)  # patches in row-major order
        return hidden.repeat_interleave(self.patch_size, dim=2).repeat_interleave(self.patch_size, dim=3)

    def mask_images(self, images: Tensor, mask: Tensor) -> Tensor:
        """Hidden pixels replaced by the mask token: [B, C, H, W]."""
        return torch.where(mask, self.mask_token.to(images.dtype), images)

    def predict_pixels(self, masked_images: Tensor) -> Tensor:
        """[B, C, H, W] -> feature map [B, D, H/r, W/r] -> pixels [B, C, H, W]."""
        return self.head(self.backbone.forward_map(masked_images))

    def forward(self, images: Tensor, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> PretrainOutput:
        """``images``: normalised [B, C, H, W]. ``mask``: a given bool [B, 1, H, W] (e.g. an
        earlier output's ``mask``) instead of a random one."""
        if mask is None:
            mask = self.random_masking(images, generator)
        else:
            self.patch_grid(images)
        prediction = self.predict_pixels(self.mask_images(images, mask))
        loss = masked_l1(prediction, images, mask)
        return PretrainOutput(loss=loss, prediction=prediction, target=images, mask=mask)

    @torch.no_grad()
    def reconstruction(self, images: Tensor, out: PretrainOutput) -> tuple[Tensor, Tensor, Tensor]:
        """(original, masked, reconstructed) images for display; visible pixels are pasted into
        the reconstruction, hidden ones are shown as 0 (the mean colour) in the masked image."""
        masked = torch.where(out.mask, torch.zeros_like(images), images)
        reconstructed = torch.where(out.mask, out.prediction, images)
        return images, masked, reconstructed
