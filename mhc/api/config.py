"""Composing the packaged Hydra configs outside a command line: ``compose_config("train", [...])``.

The commands compose through ``@hydra.main`` on :data:`mhc.config.CONFIG_SEARCH_PATH`; code,
notebooks and tests compose here, with the same resolvers and the same checks. Outside a
Hydra run there is no Hydra run folder, so ``paths.output_dir`` is given, or made unique
under ``outputs/<command>/``.
"""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from mhc.config import CONFIG_MODULE, check_config, register_configs
from mhc.training.precision import default_precision

RUN_ID = uuid.uuid4().hex[:6]  # this process's: two commands started in the same second get their own folders


def register_resolvers() -> None:
    """The ``mhc.*`` resolvers the packaged configs use, and the schema they are merged onto."""
    register_configs()
    if not OmegaConf.has_resolver("mhc.precision"):
        OmegaConf.register_new_resolver("mhc.precision", default_precision)
    if not OmegaConf.has_resolver("mhc.run_id"):
        OmegaConf.register_new_resolver("mhc.run_id", lambda: RUN_ID)


def new_output_dir(command: str, root: str | Path = "outputs") -> Path:
    """``outputs/<command>/<date>_<time>_<6 hex>``: unique even for runs started in the same second."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(root) / command / f"{stamp}_{uuid.uuid4().hex[:6]}"


def compose_config(
    name: str = "train",
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> DictConfig:
    """The config of command ``name`` (``train``, ``eval``, ``predict``, ...) with ``overrides``
    applied, checked against the schema as the commands check it.

    ``output_dir`` is the run folder (``paths.output_dir``; default: a new folder under
    ``outputs/<name>/``). ``config_dir`` is a folder of the user's own configs, searched as
    ``--config-dir`` on a command line: its files add options to the groups (an experiment,
    a backbone that extends a packaged one under a new name).
    """
    register_resolvers()
    overrides = list(overrides)
    if output_dir is None and not any(o.startswith("paths.output_dir=") for o in overrides):
        output_dir = new_output_dir(name)
    if output_dir is not None:
        overrides.append(f"paths.output_dir={Path(output_dir).absolute()}")
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{os.fspath(Path(config_dir).absolute())}]")
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    check_config(cfg, name)
    return cfg


ConfigLike = DictConfig | Sequence[str] | None


def as_config(config: ConfigLike, name: str, output_dir: str | Path | None = None,
              config_dir: str | Path | None = None, **options: object) -> DictConfig:
    """``config`` as a composed config of command ``name``: a :class:`DictConfig` as it is, or a
    list of overrides (``None``: none) composed with :func:`compose_config`. ``options`` set keys
    afterwards (``ckpt=path``), so values need no quoting for Hydra's override grammar."""
    if isinstance(config, DictConfig):
        cfg = config.copy()
        if output_dir is not None:
            OmegaConf.update(cfg, "paths.output_dir", str(Path(output_dir).absolute()), merge=False)
    elif isinstance(config, str):
        raise TypeError("config: expected a composed config or a list of overrides, not one string")
    else:
        cfg = compose_config(name, list(config or ()), output_dir, config_dir)
    for key, value in options.items():
        if value is not None:
            OmegaConf.update(cfg, key, str(value) if isinstance(value, Path) else value, merge=False)
    if isinstance(config, DictConfig):
        check_config(cfg, name)  # a config changed in code is checked like a composed one
    return cfg
