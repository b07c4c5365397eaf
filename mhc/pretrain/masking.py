"""Which parts of an input are hidden: random patch masks (MAE) and BERT's token rule.

Both draw from an optional ``torch.Generator``, so a mask is reproducible under a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PatchMask:
    """A per-sample random subset of patches.

    keep: [B, K] indices of the visible patches (in the order the encoder sees them).
    restore: [B, N] the permutation that puts [visible, masked] back into patch order.
    mask: bool [B, N], True where a patch is hidden.
    """

    keep: Tensor
    restore: Tensor
    mask: Tensor


def random_patch_mask(batch: int, patches: int, ratio: float, device: torch.device | None = None,
                      generator: torch.Generator | None = None) -> PatchMask:
    """Hide exactly ``round(patches * ratio)`` patches of every sample (He et al. 2021: sort
    uniform noise per sample, keep the lowest ``patches - hidden``)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    visible = patches - round(patches * ratio)
    noise = torch.rand(batch, patches, generator=generator, device=generator.device if generator else device)
    shuffle = noise.argsort(dim=1).to(device)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, patches, dtype=torch.bool, device=device)
    mask[:, :visible] = False
    return PatchMask(keep=shuffle[:, :visible], restore=restore, mask=mask.gather(1, restore))


@dataclass
class TokenMask:
    """BERT-style corruption: ``inputs`` to encode, ``selected`` positions to predict (bool [B, L])."""

    inputs: Tensor
    selected: Tensor


def bert_token_mask(
    ids: Tensor,
    pad_id: int,
    mask_id: int,
    vocab_size: int,
    probability: float = 0.15,
    special_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> TokenMask:
    """Select ``probability`` of the real tokens (Devlin et al. 2019); of those, 80% become
    ``mask_id``, 10% a random ordinary token, 10% stay. Padding (and ``special_ids``) is never
    selected; every sequence with a real token gets at least one selection."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mask probability must be in (0, 1), got {probability}")
    device = ids.device

    def uniform(shape: torch.Size) -> Tensor:
        return torch.rand(shape, generator=generator, device=generator.device if generator else device).to(device)

    candidates = ids != pad_id
    for special in special_ids:
        candidates &= ids != special
    scores = torch.where(candidates, uniform(ids.shape), torch.full_like(ids, 2.0, dtype=torch.float))
    selected = candidates & (scores < probability)
    # At least one prediction per sequence: its lowest-scoring candidate.
    first = scores.argmin(dim=1, keepdim=True)
    selected.scatter_(1, first, candidates.gather(1, first) | selected.gather(1, first))

    action = uniform(ids.shape)
    ordinary = [i for i in range(vocab_size) if i not in {pad_id, mask_id, *special_ids}]
    table = torch.tensor(ordinary, device=device)
    random_ids = table[(uniform(ids.shape) * len(ordinary)).long().clamp(max=len(ordinary) - 1)]
    inputs = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return TokenMask(inputs=inputs, selected=selected)
