"""Masked token modeling for the sequence transformer (Devlin et al. 2019, BERT).

15% of the real tokens are selected; of those 80% are replaced by ``<mask>``, 10% by a random
token and 10% kept; the model predicts the original ids at the selected positions only
(cross-entropy); padding is never selected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mhc.errors import ConfigError
from mhc.pretrain.base import PretrainOutput, register_objective, require_fit
from mhc.pretrain.masking import bert_token_mask


@register_objective("masked_tokens")
class MaskedTokenModel(nn.Module):
    """Wraps a :class:`~mhc.model.backbones.sequence.SequenceTransformer` with a token
    prediction head (dense, GELU, LayerNorm, vocabulary projection) used only for pretraining.

    Args:
        mask_id: the tokenizer's ``<mask>`` id (required: it must be a row of the embedding).
        probability: fraction of real tokens selected per sequence.
    """

    def __init__(self, backbone: nn.Module, mask_id: int | None = None, probability: float = 0.15) -> None:
        super().__init__()
        require_fit(backbone, "masked_tokens", "a sequence transformer backbone (seq_*)", "use 'mae' for vit_* and 'simmim' for CNNs")
        vocab = backbone.vocab_size
        if mask_id is None or not 0 <= mask_id < vocab or mask_id == backbone.pad_id:
            raise ConfigError(
                f"masked_tokens: mask_id must be the tokenizer's <mask> id within the vocabulary of {vocab}, got {mask_id}"
            )
        self.backbone, self.mask_id, self.probability = backbone, mask_id, probability
        dim = backbone.num_features
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, vocab))

    def forward(self, ids: Tensor, generator: torch.Generator | None = None) -> PretrainOutput:
        vocab = self.head[-1].out_features
        corrupted = bert_token_mask(ids, self.backbone.pad_id, self.mask_id, vocab, self.probability, generator=generator)
        tokens, _, _ = self.backbone.forward_tokens(corrupted.inputs)
        if getattr(self.backbone, "cls_token", None) is not None:
            tokens = tokens[:, 1:]
        logits = self.head(tokens)
        selected = corrupted.selected
        loss = F.cross_entropy(logits[selected], ids[selected]) if selected.any() else logits.sum() * 0.0
        return PretrainOutput(loss=loss, prediction=logits, target=ids, mask=selected)
