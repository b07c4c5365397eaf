"""Vision transformer (Dosovitskiy et al. 2021): patch embedding, CLS token, encoder, pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc.model.backbones.attention import Encoder
from mhc.model.backbones.base import ATTENTION, HEAD_PRUNING, Backbone
from mhc.model.backbones.registry import register_variants


class VisionTransformer(Backbone):
    """Images [B, 3, H, W] -> pooled features [B, D] (the CLS token, or the mean of patch tokens)."""

    capabilities = frozenset({ATTENTION, HEAD_PRUNING})
    masked_modeling = ("mae",)
    prefix_tokens = 1  # the CLS token comes before the patches

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pool: str = "cls",
        in_chans: int = 3,
        pruned_heads: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got '{pool}'")
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, dropout)
        self.num_features = dim
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if pruned_heads:
            self.encoder.prune_heads(pruned_heads)

    def prune_heads(self, heads: list[list[int]]) -> None:
        self.encoder.prune_heads(heads)

    def forward_tokens(
        self, images: Tensor, need_weights: bool = False, keep: Tensor | None = None
    ) -> tuple[Tensor, None, list[Tensor]]:
        """Tokens [B, 1 + N, D] (CLS first), no padding mask (every patch is real) and, if
        asked, attention weights per layer [B, H, L, L]; the same interface as the sequence model.

        ``keep`` [B, K] (patch indices) encodes only those patches, with their positions: the
        encoder of a masked autoencoder sees the visible patches alone (He et al. 2021).
        """
        patches = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]  # [B, N, D]
        if keep is not None:
            patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        tokens, maps = self.encoder(torch.cat([cls, patches], dim=1), None, need_weights)
        return tokens, None, maps

    @property
    def patch_size(self) -> int:
        return self.patch_embed.kernel_size[0]

    def forward(self, images: Tensor) -> Tensor:
        tokens, _, _ = self.forward_tokens(images)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)


SIZES = {"vit_tiny": dict(dim=192, depth=6, num_heads=3), "vit_small": dict(dim=384, depth=8, num_heads=6)}

register_variants(SIZES, VisionTransformer)
