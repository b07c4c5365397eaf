"""Multi-head self-attention with key-padding and causal masks, and the transformer block.

The fast path is ``F.scaled_dot_product_attention``; per-head attention weights [B, H, L, L]
are computed (the slow, explicit way) only when asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask(key_padding: Tensor | None, causal: bool, length: int, device: torch.device) -> Tensor | None:
    """Bool mask [B or 1, 1, L, L], True where a query may attend to a key.

    key_padding: bool [B, L], True at padding positions (never attended to).
    """
    mask = None
    if causal:
        mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if key_padding is not None:
        keys = ~key_padding[:, None, None, :]  # [B, 1, 1, L]
        mask = keys if mask is None else mask & keys
    return mask


class SelfAttention(nn.Module):
    """Multi-head self-attention: x [B, L, D] -> [B, L, D] (and optionally weights [B, H, L, L])."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, d]
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.nan_to_num(scores.softmax(dim=-1))  # a fully masked query row attends nowhere
            out = F.dropout(weights, self.dropout, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(B, L, -1)), weights


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.norm1(x), mask, need_weights)
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class Encoder(nn.Module):
    """A stack of blocks and a final norm; returns tokens [B, L, D] and per-layer attention weights."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        maps = []
        for block in self.blocks:
            x, weights = block(x, mask, need_weights)
            if weights is not None:
                maps.append(weights)
        return self.norm(x), maps


def masked_mean(tokens: Tensor, key_padding: Tensor | None) -> Tensor:
    """Mean over the non-padding tokens: [B, L, D] -> [B, D]."""
    if key_padding is None:
        return tokens.mean(dim=1)
    keep = (~key_padding).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
