"""The configuration: its schema and where the packaged configs live.

The YAML files are package data (``mhc/conf``, searched as ``pkg://mhc.conf``), so an installed
wheel carries them; a user adds a folder of their own with Hydra's ``--config-dir`` (or
``hydra.searchpath``) and can override any group there.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mhc.config.schema import (
    DeltaMOptions,
    HeadDefaults,
    LossDefaults,
    PruningCurveOptions,
    SpeedOptions,
    TaskOptions,
    TrainConfig,
    check_top_level,
    register_configs,
)

CONFIG_MODULE = "mhc.conf"
CONFIG_SEARCH_PATH = f"pkg://{CONFIG_MODULE}"


def config_dir() -> Path:
    """The folder of the packaged configs (a wheel installs it as plain files)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def group_options(group: str) -> list[str]:
    """The options of a packaged config group: ``group_options("backbone")`` -> ``["cnn", ...]``."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


__all__ = [
    "CONFIG_MODULE",
    "CONFIG_SEARCH_PATH",
    "DeltaMOptions",
    "HeadDefaults",
    "LossDefaults",
    "PruningCurveOptions",
    "SpeedOptions",
    "TaskOptions",
    "TrainConfig",
    "check_top_level",
    "config_dir",
    "group_options",
    "register_configs",
]
