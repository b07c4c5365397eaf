"""Backbones by name: ``create_backbone("resnet18", small_input=True)``.

A backbone is an ``nn.Module`` mapping images [B, 3, H, W] (normalised) to pooled features
[B, num_features], with a ``num_features`` attribute. Heads rely only on the pooled
features, so a backbone may expose more (token features [B, L, D], attention maps) through
methods of its own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from mhc.errors import CheckpointError, ConfigError

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that makes a backbone constructor selectable by ``name``."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_variants(variants: Mapping[str, Mapping[str, Any]], builder: Callable[..., nn.Module]) -> None:
    """Register one name per variant: ``builder(**{**defaults, **kwargs})``, kwargs from the config."""
    for name, defaults in variants.items():
        register_backbone(name)(functools.partial(_build_variant, builder, dict(defaults)))


def _build_variant(builder: Callable[..., nn.Module], defaults: dict[str, Any], **kwargs: Any) -> nn.Module:
    return builder(**{**defaults, **kwargs})


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; ``weights`` is an optional local file (never a download)."""
    if name not in _REGISTRY:
        raise ConfigError(f"backbone.name: unknown backbone '{name}'; available: {list_backbones()}")
    try:
        backbone = _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone '{name}': {err}") from None
    if weights:
        load_backbone_weights(backbone, weights)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local state dict (safetensors or a weights-only torch file), strictly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as err:  # noqa: BLE001 - any reader failure means a bad file
        raise CheckpointError(f"backbone weights '{path}' could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights '{path}' hold a {type(state).__name__}, expected a state dict")
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"backbone weights '{path}' do not fit this backbone ({' '.join(str(err).split())[:300]})") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {result.unexpected_keys[:3]}")
    if problems:
        raise CheckpointError(f"backbone weights '{path}' do not fit this backbone: {'; '.join(problems)}")
