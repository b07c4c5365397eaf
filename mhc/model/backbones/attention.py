"""Multi-head self-attention with key-padding and causal masks, and the transformer block.

The fast path is ``F.scaled_dot_product_attention``; per-head attention weights [B, H, L, L]
are computed (the explicit way) only when asked for, or where the explicit product is the faster
one: bfloat16 on CPU with short sequences (see :func:`explicit_is_faster`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# bfloat16 on CPU: up to this many tokens, the explicit product (softmax in float32) trains 1.5-5x
# faster than SDPA's CPU kernel, forward and backward; from about 256 tokens SDPA is faster
# (benchmarks/attention_kernels.py). In float32 and on GPUs, SDPA is faster at every length.
EXPLICIT_BF16_CPU_MAX_LENGTH = 128


def explicit_is_faster(q: Tensor) -> bool:
    """Whether the explicit attention product beats SDPA for queries ``q`` [B, H, L, d]."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[-2] <= EXPLICIT_BF16_CPU_MAX_LENGTH


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
        # Gate xi_h on each head's output (Michel et al. 2019): 1 in normal use; analysis sets
        # requires_grad to read |dL/dxi_h|, and a gate of 0 silences a head.
        self.head_gate = nn.Parameter(torch.ones(num_heads), requires_grad=False)
        self.original_heads = num_heads
        self.kept_heads: list[int] = list(range(num_heads))  # original indices of the remaining heads

    @torch.no_grad()
    def prune_heads(self, heads: list[int]) -> None:
        """Remove heads physically (original indices): smaller q/k/v and output projections."""
        keep = [i for i, h in enumerate(self.kept_heads) if h not in set(heads)]
        if not keep:
            raise ValueError("cannot prune every head of a layer")
        dim, d = self.out.out_features, self.head_dim
        rows = torch.tensor([part * self.num_heads * d + i * d + j for part in range(3) for i in keep for j in range(d)])
        cols = torch.tensor([i * d + j for i in keep for j in range(d)])
        qkv, out = nn.Linear(dim, len(rows)), nn.Linear(len(cols), dim)
        qkv.weight.copy_(self.qkv.weight[rows])
        qkv.bias.copy_(self.qkv.bias[rows])
        out.weight.copy_(self.out.weight[:, cols])
        out.bias.copy_(self.out.bias)
        self.qkv, self.out = qkv.to(self.out.weight.device), out.to(self.out.weight.device)
        self.head_gate = nn.Parameter(self.head_gate[keep].clone(), requires_grad=False)
        self.kept_heads = [self.kept_heads[i] for i in keep]
        self.num_heads = len(keep)

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, d]
        if need_weights or explicit_is_faster(q):
            scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            # a fully masked query row attends nowhere
            weights = torch.nan_to_num(scores.float().softmax(dim=-1)).to(v.dtype)
            out = F.dropout(weights, self.dropout, self.training) @ v
            weights = weights if need_weights else None
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out * self.head_gate.view(1, -1, 1, 1)  # [B, H, L, d]
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

    def prune_heads(self, pruned: list[list[int]]) -> None:
        """Prune heads per layer: ``pruned[l]`` lists original head indices of layer ``l``."""
        if len(pruned) != len(self.blocks):
            raise ValueError(f"pruned_heads has {len(pruned)} layers, the encoder {len(self.blocks)}")
        for block, heads in zip(self.blocks, pruned):
            if heads:
                block.attn.prune_heads(list(heads))

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


def pool_tokens(tokens: Tensor, padding: Tensor, pool: str) -> Tensor:
    """Tokens [B, L, D] with their padding [B, L] -> [B, D]: the first token (``cls``), the last
    real one (``last``), or the mean of the real ones (``mean``)."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "last":
        last = (~padding).sum(dim=1).clamp(min=1) - 1
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    return masked_mean(tokens, padding)
