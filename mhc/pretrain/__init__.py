"""Masked-modeling objectives: MAE (ViT), masked tokens (sequences), SimMIM (CNNs); trained alone by
:class:`mhc.training.PretrainModule` or beside the heads as an auxiliary task."""

from mhc.pretrain import mae, simmim, tokens  # noqa: F401 - register the objectives
from mhc.pretrain.base import PretrainOutput, build_objective, create_objective, register_objective

__all__ = ["PretrainOutput", "build_objective", "create_objective", "register_objective"]
