"""Backbones by name: ``create_backbone("resnet18", small_input=True)``.

Every registered backbone keeps the contract of :class:`mhc.model.backbones.base.Backbone`
(pooled features ``[B, num_features]``, a declared modality and capabilities), checked when
it is built. :func:`describe_backbone` reads what a configured backbone declares without
allocating it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from mhc.errors import CheckpointError, ConfigError, MhcError
from mhc.model.backbones.adapters import add_lora, lora_options, uses_lora
from mhc.model.backbones.base import LOAD_TIME_OPTIONS, Backbone, check_backbone

BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}
_CLASSES: dict[str, type] = {}  # name -> the Backbone class it builds, where the factory is one
_DEFAULTS: dict[str, dict[str, Any]] = {}  # name -> a variant's options


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that makes a backbone constructor (a :class:`Backbone` class or a function
    returning one) selectable by ``name``."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone '{name}' is already registered")
        _REGISTRY[name] = factory
        if isinstance(factory, type):
            _CLASSES[name] = factory
        return factory

    return decorator


def register_variants(variants: Mapping[str, Mapping[str, Any]], builder: type[Backbone]) -> None:
    """Register one name per variant: ``builder(**{**defaults, **kwargs})``, kwargs from the config."""
    for name, defaults in variants.items():
        register_backbone(name)(functools.partial(_build_variant, builder, dict(defaults)))
        _CLASSES[name], _DEFAULTS[name] = builder, dict(defaults)


def _build_variant(builder: Callable[..., nn.Module], defaults: dict[str, Any], **kwargs: Any) -> nn.Module:
    return builder(**{**defaults, **kwargs})


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


PRETRAINED_WEIGHTS = "backbone.safetensors"
PRETRAINED_CONFIG = "backbone.json"


def backbone_class(name: str) -> type | None:
    """The :class:`Backbone` class a registered name builds (``None`` for a plain factory)."""
    return _CLASSES.get(name)


def create_backbone(name: str, weights: str | None = None, pretrained: str | bool | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered backbone with its initial weights.

    ``weights`` and ``pretrained`` go to the backbone's constructor where it declares them as
    its own (torchvision's ``weights=IMAGENET1K_V2``, timm's and Hugging Face's
    ``pretrained=true``, which may download, or a local file in their library's format).
    Otherwise they are local files, loaded strictly after building: ``weights`` a state dict,
    ``pretrained`` what ``mhc-pretrain`` saved (its folder or its ``backbone.safetensors``),
    checked against this backbone's description first. What ``mhc-pretrain`` saved is read
    that way for every backbone. ``lora`` (``{r, alpha, dropout, targets}``) then adds
    low-rank adapters and freezes the rest (:mod:`mhc.model.backbones.adapters`)."""
    lora = kwargs.pop("lora", None)
    if name not in _REGISTRY:
        raise ConfigError(f"backbone.name: unknown backbone '{name}'; available: {list_backbones()}")
    own = set(getattr(_CLASSES.get(name), "own_weights", ()))
    if pretrained is not None and pretrained is not False and is_pretrain_output(pretrained):
        own.discard("pretrained")
    given = {"weights": weights, "pretrained": pretrained}
    passed = {key: value for key, value in given.items() if key in own and value not in (None, False)}
    try:
        backbone = _REGISTRY[name](**kwargs, **passed)
    except TypeError as err:
        raise ConfigError(f"backbone '{name}': {err}") from None
    check_backbone(backbone, name)
    if weights and "weights" not in passed:
        load_backbone_weights(backbone, weights)
    if pretrained and "pretrained" not in passed:
        if pretrained is True:
            raise ConfigError(f"backbone.pretrained: backbone '{name}' has no published weights; give what "
                              "mhc-pretrain saved (its folder) or a state-dict file")
        load_pretrained(backbone, pretrained, {"name": name, **kwargs})
    if uses_lora({"lora": lora}):
        add_lora(backbone, **lora_options(lora))
    return backbone


def is_pretrain_output(path: str | Path | bool) -> bool:
    """Whether ``path`` is what ``mhc-pretrain`` saved: its folder, or a file beside its ``backbone.json``."""
    if not isinstance(path, (str, Path)):
        return False
    path = Path(path)
    return (path / PRETRAINED_CONFIG).is_file() if path.is_dir() else (path.parent / PRETRAINED_CONFIG).is_file()


def accepted_options(name: str) -> set[str]:
    """The options the backbone ``name``'s constructor takes (empty for a plain factory)."""
    import inspect

    cls = _CLASSES.get(name)
    return set(inspect.signature(cls.__init__).parameters) - {"self"} if cls is not None else set()


def backbone_processing(options: Mapping[str, Any]) -> dict[str, Any]:
    """What the backbone ``options`` describe expects of its input (:meth:`Backbone.processing`),
    read without building it: pretrained weights' ``mean`` and ``std``, a model's ``tokenizer``."""
    options = dict(options)
    name = options.pop("name", None)
    cls = _CLASSES.get(str(name))
    if cls is None:
        return {}
    return cls.processing(**{**_DEFAULTS.get(str(name), {}), **options})


def describe_backbone(options: Mapping[str, Any]) -> Backbone:
    """The backbone a config describes, built on the meta device (no memory, no initialisation,
    no random draws, no weights read), to read what it declares: ``modality``,
    ``capabilities``, ``convolutional``, ``masked_modeling``."""
    options = {key: value for key, value in options.items() if key not in (*LOAD_TIME_OPTIONS, "lora")}
    with torch.device("meta"):
        return create_backbone(**options)


def is_convolutional_backbone(backbone: str | Mapping[str, Any]) -> bool:
    """Whether the backbone a name (with its defaults) or options describe declares itself
    convolutional (a timm model is, or is not, by its ``model``); an unknown or incomplete one is not."""
    options = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
    return _is_convolutional(json.dumps(options, sort_keys=True, default=str))


@functools.lru_cache(maxsize=None)
def _is_convolutional(options: str) -> bool:
    try:
        return describe_backbone(json.loads(options)).convolutional
    except MhcError:
        return False


def load_pretrained(backbone: nn.Module, path: str | Path, description: Mapping[str, Any]) -> None:
    """Load ``mhc-pretrain`` output strictly: a different architecture or size is one
    :class:`CheckpointError` naming the differing options and the first mismatching keys."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = path / PRETRAINED_WEIGHTS if path.is_dir() else path
    config = folder / PRETRAINED_CONFIG
    differences = ""
    if config.is_file():
        import json

        try:
            saved = json.loads(config.read_text()).get("backbone", {})
        except (json.JSONDecodeError, AttributeError) as err:
            raise CheckpointError(f"backbone.pretrained: '{config}' is not a backbone description ({err})") from None
        keys = sorted(k for k in set(saved) | set(description) if k not in LOAD_TIME_OPTIONS and k != "pruned_heads")
        differing = [f"{k}: pretrained {saved.get(k)!r}, configured {description.get(k)!r}"
                     for k in keys if k in saved and k in description and saved[k] != description[k]]
        differences = f" ({'; '.join(differing[:4])})" if differing else ""
    load_backbone_weights(backbone, weights, what=f"backbone.pretrained '{path}'", hint=differences)


def load_backbone_weights(backbone: nn.Module, path: str | Path, what: str | None = None, hint: str = "") -> None:
    """Load a local state dict (safetensors or a weights-only torch file), strictly: missing,
    unexpected or differently shaped keys are one :class:`CheckpointError` naming the first ones."""
    path = Path(path)
    what = what or f"backbone weights '{path}'"
    if not path.is_file():
        raise CheckpointError(f"{what} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
    except Exception as err:  # noqa: BLE001 - any reader failure means a bad file
        raise CheckpointError(f"{what} could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} holds a {type(state).__name__}, expected a state dict")
    own = backbone.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            problems.append(f"{label} {keys[:3]}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else ""))
    if problems:
        raise CheckpointError(f"{what} does not fit this backbone{hint}: {'; '.join(problems)}")
    backbone.load_state_dict(state, strict=True)
