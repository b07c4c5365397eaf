"""What every masked-modeling objective gives back, and how objectives are found by name.

An objective is a plain ``nn.Module`` that wraps a backbone (the very module a classifier
uses, so its weights transfer as they are) and turns a batch of unlabelled inputs into a
loss on the masked parts only::

    objective = create_objective("mae", backbone, mask_ratio=0.75)
    out = objective(images)          # PretrainOutput(loss, prediction, target, mask)
    out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from torch import Tensor, nn

from mhc.errors import ConfigError
from mhc.model.backbones.base import Backbone

if TYPE_CHECKING:
    from mhc.model.net import MultiHeadNet


@dataclass
class PretrainOutput:
    """loss: scalar, over masked positions only. mask: bool, True where the input was masked
    ([B, N] patches or [B, L] tokens; [B, 1, H, W] pixels for image-space masks).
    prediction / target: what was reconstructed and its target, in the objective's own layout
    (patches [B, N, P], token logits [B, L, V] and ids [B, L], images [B, 3, H, W])."""

    loss: Tensor
    prediction: Tensor
    target: Tensor
    mask: Tensor


ObjectiveFactory = Callable[..., nn.Module]
_OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register_objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Decorator that makes an objective class selectable by ``name``."""

    def decorator(factory: ObjectiveFactory) -> ObjectiveFactory:
        if name in _OBJECTIVES:
            raise ValueError(f"objective '{name}' is already registered")
        _OBJECTIVES[name] = factory
        return factory

    return decorator


def create_objective(name: str, backbone: nn.Module, **options: Any) -> nn.Module:
    if name not in _OBJECTIVES:
        raise ConfigError(f"objective: unknown '{name}'; available: {sorted(_OBJECTIVES)}")
    try:
        return _OBJECTIVES[name](backbone, **options)
    except TypeError as err:
        raise ConfigError(f"objective '{name}': {err}") from None


def objective_for(backbone: Backbone, name: str) -> str:
    """``auto``: the backbone's declared default (MAE for a vision transformer, masked tokens for
    token models, SimMIM for CNNs); any other name as it is."""
    if name != "auto":
        return name
    if not backbone.masked_modeling:
        raise ConfigError(f"backbone {type(backbone).__name__} declares no masked-modeling objective")
    return backbone.masked_modeling[0]


def require_fit(backbone: Backbone, objective: str, needs: str, instead: str) -> None:
    """A :class:`ConfigError` unless ``backbone`` declares ``objective`` among its masked-modeling objectives."""
    if objective not in backbone.masked_modeling:
        raise ConfigError(f"objective '{objective}' needs {needs}, got {type(backbone).__name__}; {instead}")


def build_objective(net: "MultiHeadNet", name: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """The objective ``name`` (or ``auto``) on ``net``'s backbone. ``options`` are the objective's
    own, or a mapping of options per objective name (the ``objective`` config node). A token
    objective takes ``mask_id`` from the net's tokenizer unless given."""
    resolved = objective_for(net.backbone, name)
    options = dict(options or {})
    if any(isinstance(value, Mapping) for value in options.values()):  # the config node: pick this objective's
        options = dict(options.get(resolved) or {})
    if resolved == "masked_tokens" and options.get("mask_id") is None:
        options["mask_id"] = net.tokenizer.mask_id if net.tokenizer is not None else None
        if options["mask_id"] is None:
            raise ConfigError("masked_tokens needs a <mask> token in the data's tokenizer; this data has none")
    return create_objective(resolved, net.backbone, **options)
