"""Checks of a stored model description (a checkpoint's ``mhc.net``, an export's ``config.json``)
before anything it describes is built, opened or allocated.

A description is plain data that anyone can write. Before the network is rebuilt from it:

* its shape is bounded: at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_VALUES`
  values in all (walked without recursion), integers of at most :data:`MAX_INTEGER`;
* it has a backbone (a mapping with a registered ``name``), a list of tasks and a processor;
* the backbone names no file: no load-time options (``weights``, ``pretrained``), and nothing its
  class refuses in stored options (:meth:`Backbone.stored_problem`: a Hugging Face backbone
  without its config, timm arguments that name files).

The processor and the tasks validate their own values (image sizes, tokenizers, classes); the
network is then built on the meta device and must match the stored weights' shapes
(:func:`mhc.io.net_from_description`), so no description allocates more than its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mhc.errors import CheckpointError
from mhc.model.backbones.base import LOAD_TIME_OPTIONS
from mhc.model.backbones.registry import backbone_class, list_backbones

MAX_DEPTH = 32
MAX_VALUES = 2_000_000  # a tokenizer's vocabulary and a Hugging Face config fit many times over
MAX_INTEGER = 2**31 - 1


def check_description(description: Any, source: str | Path) -> None:
    """``description`` may be built: bounded, complete, and naming no file; else one
    :class:`CheckpointError` naming ``source`` and the problem."""
    problem = description_problem(description)
    if problem:
        raise CheckpointError(f"'{source}' has an invalid model description ({problem})")


def description_problem(description: Any) -> str | None:
    """What makes ``description`` unsafe or incomplete to build, else ``None``."""
    if not isinstance(description, Mapping):
        return f"expected a mapping, got {type(description).__name__}"
    problem = shape_problem(description)
    if problem:
        return problem
    backbone, tasks = description.get("backbone"), description.get("tasks")
    if not isinstance(backbone, Mapping) or not isinstance(backbone.get("name"), str):
        return "no backbone: expected a mapping with a 'name'"
    if backbone["name"] not in list_backbones():
        return f"unknown backbone '{backbone['name'][:100]}'"
    if not isinstance(tasks, list) or not all(isinstance(t, Mapping) for t in tasks):
        return "no list of tasks"
    named = sorted(set(backbone) & set(LOAD_TIME_OPTIONS))
    if named:
        return f"the backbone names files to load weights from {named}; a stored description never does"
    kind = backbone_class(backbone["name"])
    refused = kind.stored_problem(backbone) if kind is not None else None
    return f"backbone '{backbone['name']}' refused: {refused}" if refused else None


def shape_problem(description: Mapping[str, Any]) -> str | None:
    """More than :data:`MAX_DEPTH` levels or :data:`MAX_VALUES` values, or an integer out of bounds."""
    stack: list[tuple[Any, int]] = [(description, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return f"more than {MAX_VALUES} values"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, Mapping):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            return f"the integer {value} is beyond {MAX_INTEGER}"
    return None
