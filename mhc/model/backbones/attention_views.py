"""Attention heads of timm and Hugging Face models, seen the way mhc's analysis reads its own.

The analysis (:mod:`mhc.analysis`) reads an encoder as ``encoder.blocks[l].attn`` with
``num_heads``, ``head_dim`` and ``out``, the output projection whose input is the heads'
outputs side by side ``[B, L, num_heads * head_dim]``: gating a head there is gating the head
(Michel et al. 2019). :func:`encoder_view` finds those projections in another library's layers
by the names their attention modules use, and the attention weights come from the library's own
explicit (non-fused) attention, switched on only while they are read.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from torch import Tensor, nn

# The output projection of a layer's attention, by its name in the layer, across model families:
# BERT/RoBERTa/DeBERTa, ViT/DINOv2 (transformers 5), Llama/Mistral, CLIP/BART, DistilBERT, GPT-2,
# timm's ViTs, GPT-NeoX.
OUTPUT_PROJECTIONS = ("attention.output.dense", "attention.o_proj", "self_attn.o_proj", "self_attn.out_proj",
                      "attention.out_lin", "attn.c_proj", "attn.out_proj", "attn.proj", "attention.dense")


@dataclass(eq=False)
class HeadsView:
    """One layer's attention heads: ``out`` takes their outputs side by side."""

    num_heads: int
    head_dim: int
    out: nn.Module

    @property
    def kept_heads(self) -> list[int]:
        return list(range(self.num_heads))

    @property
    def original_heads(self) -> int:
        return self.num_heads


@dataclass(eq=False)
class BlockView:
    attn: HeadsView


@dataclass(eq=False)
class EncoderView:
    """A stack of layers, as ``blocks``."""

    blocks: list[BlockView]


def encoder_view(layers: Sequence[nn.Module], num_heads: int, head_dim: int) -> EncoderView | None:
    """The view of ``layers`` (each with one self-attention), or ``None`` where a layer's output
    projection is not found."""
    blocks = []
    for layer in layers:
        named = dict(layer.named_modules())
        out = next((named[name] for name in OUTPUT_PROJECTIONS if name in named), None)
        if out is None:
            return None
        blocks.append(BlockView(HeadsView(num_heads, head_dim, out)))
    return EncoderView(blocks) if blocks else None


def hf_layers(model: nn.Module, depth: int) -> nn.ModuleList | None:
    """A Hugging Face model's stack of ``depth`` layers: its first ``ModuleList`` of that length."""
    return next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth), None)


@contextmanager
def timm_attention_weights(blocks: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """Collect the attention weights ``[B, H, L, L]`` of timm ViT blocks: their explicit
    attention is switched on and the softmax read where it enters ``attn_drop``."""
    maps: list[Tensor] = []
    fused = [block.attn.fused_attn for block in blocks]
    handles = [block.attn.attn_drop.register_forward_hook(lambda module, args, output: maps.append(args[0]))
               for block in blocks]
    for block in blocks:
        block.attn.fused_attn = False
    try:
        yield maps
    finally:
        for block, was in zip(blocks, fused):
            block.attn.fused_attn = was
        for handle in handles:
            handle.remove()


def is_timm_vit(model: nn.Module) -> bool:
    """Whether a timm model is a ViT whose attention the view reads (``blocks[l].attn`` with
    ``num_heads``, ``proj``, ``attn_drop`` and ``fused_attn``, and a patch embedding)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not len(blocks) or not hasattr(model, "patch_embed"):
        return False
    return all(all(hasattr(getattr(block, "attn", None), a) for a in ("num_heads", "head_dim", "proj", "attn_drop", "fused_attn"))
               for block in blocks)
