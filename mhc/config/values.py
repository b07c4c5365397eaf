"""Value checks of the options the schema types leave open: ``optimizer.lr=-1``,
``trainer.accumulate_grad_batches=0``, ``backbone.widths=[0]`` and the like are one
:class:`~mhc.errors.ConfigError` naming the key and what it expected, before anything is built
(instead of a ``ZeroDivisionError`` after the data is read, or a run that trains wrongly).

Each rule applies where its key is set (not ``None``); a group the command does not have is
skipped. Options of one target are checked by that target (the data modules, the tasks, the
weighting methods).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from mhc.errors import ConfigError

Check = Callable[[Any], bool]


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_at_least(low: int) -> tuple[Check, str]:
    return (lambda v: is_integer(v) and v >= low), f"an integer >= {low}"


def number_above(low: float) -> tuple[Check, str]:
    return (lambda v: is_number(v) and v > low), f"a number > {low:g}"


def number_at_least(low: float) -> tuple[Check, str]:
    return (lambda v: is_number(v) and v >= low), f"a number >= {low:g}"


def fraction(closed: bool = False) -> tuple[Check, str]:
    if closed:
        return (lambda v: is_number(v) and 0 <= v <= 1), "a number in [0, 1]"
    return (lambda v: is_number(v) and 0 <= v < 1), "a number in [0, 1)"


def each(rule: tuple[Check, str]) -> tuple[Check, str]:
    check, expected = rule
    return (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(check(x) for x in v)), f"a non-empty list, each {expected}"


def steps_or_unlimited() -> tuple[Check, str]:
    return (lambda v: is_integer(v) and (v == -1 or v >= 1)), "an integer >= 1, or -1 (no limit)"


BACKBONE_SIZES = ("stem", "stem_stride", "vocab_size", "max_length", "dim", "depth", "num_heads", "filters",
                  "patch_size", "in_chans")
RULES: dict[str, tuple[Check, str]] = {
    "recipe": ((lambda v: v == "auto"), "auto or null (experiment=auto sets it)"),
    "seed": ((lambda v: is_integer(v) and 0 <= v < 2**32), "an integer in [0, 2**32)"),
    "optimizer.lr": number_above(0),
    "optimizer.weight_decay": number_at_least(0),
    "optimizer.momentum": fraction(),
    "optimizer.betas": each(fraction()),
    "optimizer.eps": number_above(0),
    "optimizer.layer_decay": ((lambda v: is_number(v) and 0 < v <= 1), "a number in (0, 1]"),
    "scheduler.warmup_fraction": fraction(),
    "scheduler.min_lr_ratio": fraction(closed=True),
    "trainer.accumulate_grad_batches": integer_at_least(1),
    "trainer.gradient_clip_val": number_at_least(0),
    "trainer.log_every_n_steps": integer_at_least(1),
    "trainer.check_val_every_n_epoch": integer_at_least(1),
    "trainer.max_steps": steps_or_unlimited(),
    "trainer.num_sanity_val_steps": ((lambda v: is_integer(v) and v >= -1), "an integer >= 0, or -1 (all)"),
    "backbone_lr_scale": number_at_least(0),
    "perf.threads": ((lambda v: v == "auto" or (is_integer(v) and v >= 1)), "auto or an integer >= 1"),
    "backbone.widths": each(integer_at_least(1)),
    "backbone.kernel_sizes": each(integer_at_least(1)),
    "backbone.dropout": fraction(),
    "backbone.drop_path_rate": fraction(),
    "head.dropout": fraction(),
    "loss.label_smoothing": fraction(),
    "loss.focal_gamma": number_at_least(0),
    "loss.balanced_power": number_at_least(0),
    **{f"backbone.{name}": integer_at_least(1) for name in BACKBONE_SIZES},
    "backbone.image_size": ((lambda v: integer_at_least(1)[0](v) or each(integer_at_least(1))[0](v)),
                            "an integer >= 1 or a list of them"),
}


def check_values(cfg: DictConfig) -> None:
    """Every option in :data:`RULES` that ``cfg`` sets has a valid value, and ``trainer.max_epochs``
    ends the run (or ``trainer.max_steps`` does); else one :class:`ConfigError` naming the key."""
    for key, (check, expected) in RULES.items():
        value = plain(OmegaConf.select(cfg, key, default=None, throw_on_missing=False))
        if value is not None and not check(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    epochs = plain(OmegaConf.select(cfg, "trainer.max_epochs", default=None, throw_on_missing=False))
    steps = plain(OmegaConf.select(cfg, "trainer.max_steps", default=None, throw_on_missing=False))
    if epochs is not None and not (is_integer(epochs) and (epochs >= 1 or (epochs == -1 and is_integer(steps) and steps >= 1))):
        raise ConfigError(f"trainer.max_epochs must be an integer >= 1 (or -1 with trainer.max_steps set), got {epochs!r}")


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
