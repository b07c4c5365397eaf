"""Sequence transformer over token ids, with key-padding and optional causal masks.

Padding never changes any output: padded keys are masked out of attention and out of the
mean pooling, so the same sequence padded to different lengths gives the same features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mhc.model.backbones.attention import Encoder, attention_mask, pool_tokens
from mhc.model.backbones.base import ATTENTION, HEAD_PRUNING, TOKENS, Backbone
from mhc.model.backbones.registry import register_variants


def sinusoids(length: int, dim: int) -> Tensor:
    """Sinusoidal positions [1, length, dim] (Vaswani et al. 2017), unit scale per channel.

    Used as the initial value of the learned positional embedding: offsets between positions
    are linear maps of sinusoids, so relative patterns (the previous token) are learned fast.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table[None] * 2**0.5


class SequenceTransformer(Backbone):
    """Token ids [B, L] (``pad_id`` marks padding) -> pooled features [B, D].

    Args:
        vocab_size: number of token ids, ``pad_id`` included.
        max_length: longest sequence (learned positional embeddings).
        causal: position t attends only to positions <= t.
        pool: ``mean`` (masked mean over real tokens), ``cls`` (a prepended CLS token; not
            with ``causal``, where it would see nothing) or ``last`` (the last real token).
    """

    modality = TOKENS
    capabilities = frozenset({ATTENTION, HEAD_PRUNING})
    masked_modeling = ("masked_tokens",)

    def __init__(
        self,
        vocab_size: int = 256,
        max_length: int = 128,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = False,
        pool: str = "mean",
        pad_id: int = 0,
        pruned_heads: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("mean", "cls", "last"):
            raise ValueError(f"pool must be 'mean', 'cls' or 'last', got '{pool}'")
        if pool == "cls" and causal:
            raise ValueError("pool='cls' with a causal mask would pool a token that sees nothing; use 'last'")
        self.causal, self.pool, self.pad_id = causal, pool, pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(sinusoids(max_length + 1, dim) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, dropout)
        self.num_features = dim
        self.max_length = max_length
        # Same scale for token and position embeddings, or the positions drown (nn.Embedding draws N(0, 1)).
        nn.init.normal_(self.embed.weight, std=0.02)
        if pruned_heads:
            self.encoder.prune_heads(pruned_heads)

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the input's own: the CLS token of ``pool='cls'``."""
        return int(self.cls_token is not None)

    def prune_heads(self, heads: list[list[int]]) -> None:
        self.encoder.prune_heads(heads)

    def forward_tokens(self, ids: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Token features [B, L', D], the padding mask [B, L'] and per-layer weights [B, H, L', L']."""
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_length {self.max_length}")
        padding = ids == self.pad_id  # [B, L]
        x = self.embed(ids)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            padding = torch.cat([padding.new_zeros(x.shape[0], 1), padding], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        mask = attention_mask(padding, self.causal, x.shape[1], x.device)
        tokens, maps = self.encoder(x, mask, need_weights)
        return tokens, padding, maps

    def forward(self, ids: Tensor) -> Tensor:
        tokens, padding, _ = self.forward_tokens(ids)
        return pool_tokens(tokens, padding, self.pool)


SIZES = {"seq_tiny": dict(dim=64, depth=2, num_heads=4), "seq_small": dict(dim=128, depth=4, num_heads=4)}

register_variants(SIZES, SequenceTransformer)
