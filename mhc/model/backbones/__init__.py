"""Shared backbones, selectable by name."""

from mhc.model.backbones import bag, cnn, hf_models, resnet, sequence, textcnn, timm_models, vit  # noqa: F401  (registers the backbones)
from mhc.model.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
