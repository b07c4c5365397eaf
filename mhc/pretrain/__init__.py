"""Masked-modeling pretraining of backbones: MAE (ViT), masked tokens (sequences), SimMIM (CNNs)."""

from mhc.pretrain import mae, simmim, tokens  # noqa: F401 - register the objectives
from mhc.pretrain.base import PretrainOutput, build_objective, create_objective, register_objective

__all__ = ["PretrainOutput", "build_objective", "create_objective", "register_objective"]
