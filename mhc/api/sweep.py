"""An Optuna search over training settings, as ``mhc-sweep`` runs it: each trial a full run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from mhc.api.train import train
from mhc.config import config_dir
from mhc.errors import ConfigError, NonFiniteLossError


def default_space() -> Path:
    """The packaged search space: learning rate, two task weights and the weighting method."""
    return config_dir() / "sweep" / "default.yaml"


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``params`` of a search-space file, checked: each a float, int or categorical spec."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space: no search-space file at '{path}'")
    params = OmegaConf.to_container(OmegaConf.load(path)).get("params") or {}
    if not params:
        raise ConfigError(f"{path}: no 'params' to search")
    for key, spec in params.items():
        kind = (spec or {}).get("type")
        needed = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}.get(kind)
        if needed is None:
            raise ConfigError(f"{path}: params.{key}.type must be float, int or categorical, got {kind!r}")
        missing = [k for k in needed if k not in spec]
        if missing:
            raise ConfigError(f"{path}: params.{key} ({kind}) needs {missing}")
    return params


def suggest(trial: Any, key: str, spec: Mapping[str, Any]) -> Any:
    """One value of ``key`` drawn by the trial from its spec."""
    if spec["type"] == "float":
        return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    if spec["type"] == "int":
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)))
    return trial.suggest_categorical(key, list(spec["choices"]))


def objective_value(metrics: Mapping[str, Mapping[str, float]], metric: str) -> float:
    """The mean over heads of ``metric`` among per-head validation results ``{task: {metric: value}}``."""
    values = [v[metric] for v in metrics.values() if metric in v]
    if not values:
        raise ConfigError(f"--metric {metric}: the runs report no such per-head metric")
    return sum(values) / len(values)


def run_sweep(space: Mapping[str, Mapping[str, Any]], overrides: Sequence[str], trials: int, output: Path,
              metric: str = "f1", direction: str = "maximize", seed: int = 0, storage: str | None = None,
              study_name: str | None = None) -> Any:
    """Run ``trials`` training runs chosen by Optuna's TPE sampler; returns the study."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        chosen = {key: suggest(trial, key, spec) for key, spec in space.items()}
        folder = output / f"trial_{trial.number:03d}"
        result = train([*overrides, *[f"{k}={v}" for k, v in chosen.items()], "test=false"], output_dir=folder)
        return objective_value(result.metrics["val"], metric)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed), storage=storage,
                                study_name=study_name, load_if_exists=storage is not None)
    # A diverging trial (e.g. too large a learning rate) fails alone; other errors end the sweep.
    study.optimize(objective, n_trials=trials, catch=(NonFiniteLossError,))
    return study
