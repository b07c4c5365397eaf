"""Classification heads: one small MLP per task on the shared features, and the fused forward
that evaluates every single-layer head with one matmul."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClassificationHead(nn.Module):
    """[Dropout -> Linear -> ReLU] per hidden layer, then Dropout -> Linear to the task's logits."""

    def __init__(self, in_features: int, num_outputs: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Dropout(dropout), nn.Linear(width, num_outputs)]
        self.layers = nn.Sequential(*layers)

    @property
    def linear(self) -> nn.Linear | None:
        """The head's only layer when it is a single linear map (dropout aside), else ``None``."""
        return self.layers[1] if len(self.layers) == 2 else None

    @property
    def output(self) -> nn.Linear:
        """The last linear layer, whose outputs are the logits."""
        return self.layers[-1]

    @property
    def dropout(self) -> float:
        return self.layers[0].p

    def forward(self, features: Tensor) -> Tensor:  # [B, D] -> [B, num_outputs]
        return self.layers(features)


def fused_head_logits(heads: Mapping[str, ClassificationHead], features: Tensor, training: bool) -> dict[str, Tensor]:
    """Logits of every head, the single-linear ones (with no dropout active) from one matmul
    over their concatenated weights: with many small heads, one large product instead of many
    tiny ones. Equal to calling each head; the parameters stay per head."""
    fusable = [name for name, head in heads.items() if head.linear is not None and not (training and head.dropout > 0)]
    fused: dict[str, Tensor] = {}
    if len(fusable) > 1:
        linears = [heads[name].linear for name in fusable]
        logits = F.linear(features, torch.cat([m.weight for m in linears]), torch.cat([m.bias for m in linears]))
        fused = dict(zip(fusable, logits.split([m.out_features for m in linears], dim=-1)))
    return {name: fused[name] if name in fused else head(features) for name, head in heads.items()}
