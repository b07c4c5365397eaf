"""Attention maps of a few samples, cropped to their real tokens and labelled, for figures and
dashboards (the report of ``mhc-analyze`` and the attention panels of a training run)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mhc.analysis.attention import attention_rollout
from mhc.model.backbones.base import IMAGE
from mhc.model.net import MultiHeadNet


def token_labels(net: MultiHeadNet, inputs: Tensor, length: int) -> list[str]:
    """Axis labels for one sample's attention map of ``length`` positions: the backbone's prefix
    tokens (``CLS``), then patches by grid position ``row,col`` for images, or for tokens the
    saved tokenizer's strings (ids where the model has none)."""
    prefix = ["CLS"] * net.backbone.prefix_tokens
    if net.modality == IMAGE:
        side = round((length - len(prefix)) ** 0.5)
        return [*prefix, *[f"{i // side},{i % side}" for i in range(length - len(prefix))]]
    tokenizer = net.tokenizer
    names = [(tokenizer.decode([i]) if tokenizer else "") or str(i) for i in inputs.tolist()]
    return [*prefix, *names][:length]


def patch_grid(net: MultiHeadNet, inputs: Tensor) -> int | None:
    """The side of the square patch grid an image transformer sees for images ``inputs`` (the
    patches follow its prefix tokens); ``None`` for tokens."""
    return inputs.shape[-1] // net.backbone.patch_size if net.modality == IMAGE else None


def sample_maps(net: MultiHeadNet, inputs: Tensor) -> list[dict[str, Any]]:
    """Attention maps and rollout of a few samples, cropped to their real tokens."""
    if not len(inputs):
        return []
    with torch.no_grad():
        maps, padding = net.attention(inputs)
    rollout = attention_rollout(maps)
    samples = []
    for i in range(len(inputs)):
        real = torch.ones(maps[0].shape[-1], dtype=torch.bool) if padding is None else ~padding[i].cpu()
        keep = torch.nonzero(real).flatten()
        sample = {
            "maps": [m[i].cpu()[..., keep[:, None], keep] for m in maps],
            "rollout": rollout[i].cpu()[keep[:, None], keep],
            "labels": token_labels(net, inputs[i].cpu(), len(keep)),
        }
        if padding is None and inputs.ndim == 4:
            sample["image"] = inputs[i].cpu()
        samples.append(sample)
    return samples
