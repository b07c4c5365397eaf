"""Low-rank adapters (LoRA, through ``peft``) on any backbone: ``backbone.lora.r=8``.

The backbone's linear layers (or those named in ``targets``) get LoRA adapters and its own
weights are frozen, so fine-tuning trains the adapters and the heads only. The adapters are part
of the backbone's description (``lora`` in its options), so a checkpoint rebuilds them; an
export merges them into the weights (:func:`merge_lora`), giving a plain backbone of the same
architecture and the same outputs.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from mhc.errors import ConfigError

ADAPTER_NAME = "default"


def lora_targets(backbone: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """The modules to adapt: every ``nn.Linear`` of the backbone, or those whose name ends with
    one of ``targets`` (``["query", "value"]``, as in ``peft``)."""
    names = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    if targets:
        names = [name for name in names if any(name == t or name.endswith(f".{t}") for t in targets)]
    if not names:
        wanted = f" named {list(targets)}" if targets else ""
        raise ConfigError(f"backbone.lora: the backbone has no linear layers{wanted} to adapt")
    return names


def add_lora(backbone: nn.Module, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
             targets: Sequence[str] | None = None) -> nn.Module:
    """Add LoRA adapters of rank ``r`` (scale ``alpha / r``; ``alpha`` defaults to ``r``) in
    place and freeze everything else of ``backbone``."""
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"backbone.lora.r must be a positive integer, got {r!r}")
    config = LoraConfig(r=r, lora_alpha=float(alpha if alpha is not None else r), lora_dropout=float(dropout),
                        target_modules=lora_targets(backbone, targets))
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = "lora_" in name
    return backbone


def merge_lora(backbone: nn.Module) -> int:
    """Merge every LoRA adapter into its layer's weights and put the plain layer back; the
    number of layers merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[ADAPTER_NAME])
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, module.get_base_layer())
            merged += 1
    return merged


def uses_lora(backbone_options: Any) -> bool:
    """Whether backbone options ask for adapters (a ``lora`` option with a rank above 0)."""
    lora = backbone_options.get("lora") if isinstance(backbone_options, dict) else None
    return isinstance(lora, dict) and bool(lora.get("r"))


def lora_options(options: Any) -> dict[str, Any]:
    """The ``lora`` backbone option as keyword arguments of :func:`add_lora` (checked)."""
    if not isinstance(options, dict):
        raise ConfigError(f"backbone.lora must be a mapping such as {{r: 8}}, got {options!r}")
    unknown = sorted(set(options) - {"r", "alpha", "dropout", "targets"})
    if unknown:
        raise ConfigError(f"backbone.lora: unknown options {unknown}; known: r, alpha, dropout, targets")
    return dict(options)
