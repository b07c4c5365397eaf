"""Hydra's own errors as one line, with the nearest option where there is one.

Hydra composes the config before a command starts, and prints what fails there (a typo in a
key, a value of the wrong type, an option a group does not have) over several lines with a
note about ``HYDRA_FULL_ERROR``. The commands print every error as one line instead:

    error: trainer.max_epoch: no such option; did you mean trainer.max_epochs?
    error: backbone=resnet5: backbone has no option 'resnet5'; did you mean resnet18? (its options: ...)
"""

from __future__ import annotations

import difflib
import re
from typing import Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from mhc.config import CONFIG_MODULE


def one_line(printed: str, config_name: str, overrides: Sequence[str]) -> str:
    """The message of what Hydra ``printed`` when composing ``config_name`` with ``overrides`` failed."""
    lines = [line.strip() for line in printed.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    if not lines:
        return "the config could not be composed"
    first = lines[0]
    if match := re.match(r"Could not override '([^']+)'", first):
        key = match.group(1)
        close = nearest_keys(key, config_name, overrides)
        return f"{key}: no such option; " + (did_you_mean(close).strip() if close else f"+{key}=... adds a new key")
    if match := re.match(r"Could not delete from config\. '([^']+)' does not exist", first):
        key = match.group(1)
        return f"~{key}: no such option to remove; {did_you_mean(nearest_keys(key, config_name, overrides))}".rstrip("; ")
    if (match := re.match(r"Error merging override (.+)", first)) and len(lines) > 1:
        return f"{match.group(1)}: {lines[1]}"
    if match := re.match(r"In '[^']*': Could not find '(.+)/([^/']+)'", first):
        group, name = match.groups()
        listing = lines[2:] if len(lines) > 1 and lines[1].startswith("Available options") else []
        options = listing[:next((i for i, line in enumerate(listing) if line.startswith("Config search path")), None)]
        close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
        listed = f"(its options: {', '.join(options)})" if options else ""
        return f"{group}={name}: {group} has no option '{name}'; {did_you_mean(close)}{listed}".rstrip("; ")
    if (match := re.match(r"no viable alternative at input '(.+)'", first)) and (
            given := [o for o in overrides if match.group(1) in o]):
        return f"{given[0]}: not an override Hydra can read ({first}); quote values with brackets or commas: 'key=[1,2]'"
    return "; ".join(lines)


def did_you_mean(names: Sequence[str]) -> str:
    return f"did you mean {' or '.join(names)}? " if names else ""


def nearest_keys(key: str, config_name: str, overrides: Sequence[str]) -> list[str]:
    """The keys beside where ``key`` would be that are spelt most like it, in the config composed
    with the other overrides (or without them)."""
    parent, _, leaf = key.rpartition(".")
    others = [o for o in overrides if not o.startswith(("hydra.", "-")) and o.split("=", 1)[0].lstrip("~+") != key]
    cfg = composed(config_name, others) or composed(config_name, [])  # a sweep (-m a=1,2) composes without them
    if cfg is None:
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=3, cutoff=0.6)
    return [f"{parent}.{name}" if parent else name for name in close]


def composed(config_name: str, overrides: Sequence[str]) -> DictConfig | None:
    try:
        GlobalHydra.instance().clear()
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(config_name, overrides=list(overrides))
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy; the message stands without it
        return None
