"""Classification heads: one small MLP per task on the shared features."""

from __future__ import annotations

from typing import Sequence

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

    def forward(self, features: Tensor) -> Tensor:  # [B, D] -> [B, num_outputs]
        return self.layers(features)
