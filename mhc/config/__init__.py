"""The configuration: its schema and where the packaged configs live.

The YAML files are package data (``mhc/conf``, searched as ``pkg://mhc.conf``), so an installed
wheel carries them; a user adds a folder of their own with Hydra's ``--config-dir`` (or
``hydra.searchpath``) and can override any group there.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig

from mhc.config.schema import (
    DeltaMOptions,
    HeadDefaults,
    LossDefaults,
    PruningCurveOptions,
    SpeedOptions,
    TaskOptions,
    TrainConfig,
    check_task_options,
    check_top_level,
    register_configs,
)
from mhc.config.values import check_values

CONFIG_MODULE = "mhc.conf"
CONFIG_SEARCH_PATH = f"pkg://{CONFIG_MODULE}"


def check_config(cfg: DictConfig, command: str) -> None:
    """What Hydra's schema merge leaves unchecked: top-level keys of other commands
    (:func:`check_top_level`), option values (:func:`~mhc.config.values.check_values`) and the
    per-task options' types (:func:`check_task_options`)."""
    check_top_level(cfg, command)
    check_values(cfg)
    check_task_options(cfg)


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
    "check_config",
    "check_top_level",
    "config_dir",
    "group_options",
    "register_configs",
]
