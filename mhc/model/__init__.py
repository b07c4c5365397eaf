"""Plain PyTorch models: backbones, heads and the multi-head network."""

from mhc.model.backbones import create_backbone, list_backbones, register_backbone
from mhc.model.heads import ClassificationHead
from mhc.model.net import MultiHeadNet

__all__ = ["ClassificationHead", "MultiHeadNet", "create_backbone", "list_backbones", "register_backbone"]
