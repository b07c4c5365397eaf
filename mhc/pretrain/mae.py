"""Masked autoencoder for the vision transformer (He et al. 2021, "Masked Autoencoders Are
Scalable Vision Learners").

A random 75% of the patches of each image is hidden; the ViT encoder runs on the visible
patches only, which is what makes pretraining cheap; a light transformer decoder fills the
hidden positions with a learned mask token and predicts their pixels; the loss is the mean
squared error on the hidden patches only, optionally against per-patch normalised pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc.errors import ConfigError
from mhc.model.backbones.attention import Encoder
from mhc.pretrain.base import PretrainOutput, register_objective, require_fit
from mhc.pretrain.masking import random_patch_mask


def masked_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_position`` [B, N] over the masked positions (0 when nothing is masked)."""
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


@register_objective("mae")
class MaskedAutoencoder(nn.Module):
    """Wraps a :class:`~mhc.model.backbones.vit.VisionTransformer` (its weights are the ones a
    classifier later uses) with a decoder that exists only for pretraining.

    Args:
        mask_ratio: fraction of patches hidden per sample (exact: ``round(N * ratio)``).
        decoder_dim, decoder_depth, decoder_heads: the light decoder.
        norm_pix_loss: regress each patch's pixels normalised by its own mean and variance.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        require_fit(backbone, "mae", "a vision transformer backbone (vit_*)", "use 'simmim' for CNNs and 'masked_tokens' for seq_*")
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"mae: mask_ratio must be in [0, 1), got {mask_ratio}")
        self.backbone = backbone
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.in_chans = backbone.patch_embed.in_channels
        patches = backbone.pos_embed.shape[1] - 1
        self.decoder_embed = nn.Linear(backbone.num_features, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + patches, decoder_dim))
        self.decoder = Encoder(decoder_dim, decoder_depth, decoder_heads)
        self.decoder_pred = nn.Linear(decoder_dim, backbone.patch_size**2 * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def patchify(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, p*p*C], patches in row-major order (as the patch embedding)."""
        p = self.backbone.patch_size
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """[B, N, p*p*C] -> [B, C, H, W] (square images)."""
        p, C = self.backbone.patch_size, self.in_chans
        B, N, _ = patches.shape
        side = round(N**0.5)
        x = patches.reshape(B, side, side, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, side * p, side * p)

    def targets(self, images: Tensor) -> Tensor:
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> PretrainOutput:
        B = len(images)
        N = self.decoder_pos.shape[1] - 1
        hidden = random_patch_mask(B, N, self.mask_ratio, images.device, generator)
        encoded, _, _ = self.backbone.forward_tokens(images, keep=hidden.keep)  # [B, 1 + K, D]
        x = self.decoder_embed(encoded)
        fill = self.mask_token.expand(B, N - hidden.keep.shape[1], -1)
        patches = torch.cat([x[:, 1:], fill], dim=1)  # [visible, hidden] -> patch order
        patches = patches.gather(1, hidden.restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x, _ = self.decoder(torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos)
        prediction = self.decoder_pred(x[:, 1:])
        target = self.targets(images)
        loss = masked_mean(((prediction - target) ** 2).mean(-1), hidden.mask)
        return PretrainOutput(loss=loss, prediction=prediction, target=target, mask=hidden.mask)

    @torch.no_grad()
    def reconstruction(self, images: Tensor, out: PretrainOutput) -> tuple[Tensor, Tensor, Tensor]:
        """(original, masked, reconstructed) images for display; visible patches are pasted
        into the reconstruction, and normalised-pixel predictions are mapped back per patch."""
        target = self.patchify(images)
        prediction = out.prediction
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            prediction = prediction * (var + 1e-6).sqrt() + mean
        hidden = out.mask.unsqueeze(-1)
        masked = self.unpatchify(torch.where(hidden, torch.zeros_like(target), target))
        reconstructed = self.unpatchify(torch.where(hidden, prediction, target))
        return images, masked, reconstructed
