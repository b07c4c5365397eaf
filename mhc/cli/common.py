"""What the Hydra entry points share: building objects from the config, and clean errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from mhc.config import check_top_level, register_configs
from mhc.errors import ConfigError, MhcError
from mhc.tasks import TaskSpec, resolve_tasks

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")
console = Console(stderr=True)
register_configs()


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@hydra.main`` on the project's ``conf/``, printing an :class:`MhcError` as one line (exit 1)."""

    def decorator(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def guarded(cfg: DictConfig) -> Any:
            try:
                check_top_level(cfg)
                return fn(cfg)
            except MhcError as err:
                console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
                sys.exit(1)

        return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(guarded)

    return decorator


def instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with a one-line error naming the config group."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as err:  # noqa: BLE001 - instantiate wraps every constructor error
        if isinstance(err, MhcError):
            raise
        cause = err.__cause__ or err
        if isinstance(cause, MhcError):
            raise cause from None
        raise ConfigError(f"{what}: {' '.join(str(cause).split())}") from None


def chosen_option(cfg: DictConfig, group: str) -> str:
    """The option picked for a config group (``manifest`` for ``data=manifest``), for messages:
    Hydra's record on the command line, else the group's file whose ``_target_`` matches."""
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group))
    target = cfg[group].get("_target_")
    for path in sorted(Path(CONFIG_PATH, group).glob("*.yaml")):
        if OmegaConf.load(path).get("_target_") == target:
            return path.stem
    return str(target)


def build_datamodule(cfg: DictConfig) -> Any:
    return instantiate(cfg.data, "data")


def checkpoint_with_data(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """The module of ``cfg.ckpt``, the configured data serving the checkpoint's tasks, and a
    Trainer for evaluation or prediction (no logger, no checkpoints)."""
    from mhc.training import MultiHeadModule

    module = MultiHeadModule.from_checkpoint(cfg.ckpt)
    datamodule = build_datamodule(cfg)
    datamodule.set_tasks(list(module.tasks.values()))
    datamodule.use_preprocess(module.net.config()["preprocess"])  # e.g. the saved tokenizer, never refitted
    # One process: a distributed sampler would pad the split with repeated samples.
    trainer = instantiate(cfg.trainer, "trainer", logger=False, enable_checkpointing=False, callbacks=[],
                          devices=1, num_nodes=1, strategy="auto")
    return module, datamodule, trainer


MASKED_MODELING = "masked_modeling"  # the kind of an auxiliary task: the objective of ``objective``


def auxiliary_tasks(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Tasks of kind ``masked_modeling`` with a weight above 0 (``tasks.masked.weight=0.5``):
    ``{name: {"objective", "weight", "options"}}``, the masked-modeling objective
    (``cfg.objective``) trained alongside the heads."""
    found = {}
    for name, options in (OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") else {}).items():
        if (options or {}).get("kind") != MASKED_MODELING:
            continue
        extra = sorted(k for k, v in options.items() if v is not None and k not in ("kind", "weight"))
        if extra:
            raise ConfigError(f"tasks.{name}: a {MASKED_MODELING} task takes only 'weight' (its objective is set under "
                              f"objective.*), not {extra}")
        weight = float(options.get("weight") if options.get("weight") is not None else 1.0)
        if weight > 0:
            found[name] = {"objective": str(cfg.objective.name), "weight": weight,
                           "options": OmegaConf.to_container(cfg.objective, resolve=True)}
    return found


def config_tasks(cfg: DictConfig, provided: list[TaskSpec]) -> list[TaskSpec]:
    """The data's tasks with the ``head`` and ``loss`` defaults, then ``tasks.<name>`` options, applied."""
    head = OmegaConf.to_container(cfg.head, resolve=True)
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    overrides = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") else {}
    overrides = {k: v for k, v in overrides.items() if (v or {}).get("kind") != MASKED_MODELING}
    with_defaults = [
        fill_defaults(t, {**head, "loss": loss[t.kind], "label_smoothing": loss["label_smoothing"],
                          "focal_gamma": loss["focal_gamma"]})
        for t in provided
    ]
    return resolve_tasks(with_defaults, overrides)


def fill_defaults(task: TaskSpec, defaults: dict[str, Any]) -> TaskSpec:
    """``task`` with ``defaults`` for the options it leaves at their built-in values, so that
    what the data declares for a task (e.g. a manifest's ``data.tasks``) wins over defaults."""
    pristine = TaskSpec(task.name, task.kind, task.classes)
    fill = {k: v for k, v in defaults.items() if getattr(task, k) == getattr(pristine, k)}
    return TaskSpec.from_dict({**task.to_dict(), **fill})


def build_callbacks(cfg: DictConfig, has_logger: bool = True) -> list[Any]:
    """The configured callbacks; those that only feed a logger are left out of a run without one."""
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    if not has_logger:
        from pytorch_lightning.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        if str(node.get("_target_", "")).endswith("WandbLogger") and not node.get("offline", False) and not wandb_runs_without_fallback():
            console.print("[yellow]warning:[/] wandb has no API key; logging offline (sync later with `wandb sync`)")
            node = OmegaConf.merge(node, {"offline": True})
        loggers.append(instantiate(node, f"logger.{name}"))
    return loggers


def wandb_runs_without_fallback() -> bool:
    """Whether wandb could log online: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def results_table(results: dict[str, dict[str, float]], title: str) -> Table:
    """A rich table: one row per head, one column per metric, and a mean row."""
    order = ["acc", "f1", "auroc", "loss"]
    names = sorted({m for values in results.values() for m in values}, key=lambda m: (order.index(m) if m in order else len(order), m))
    table = Table(title=title, title_justify="left")
    table.add_column("task")
    for name in names:
        table.add_column(name, justify="right")
    for task, values in results.items():
        table.add_row(task, *[f"{values[m]:.4f}" if m in values else "-" for m in names])
    means = [[v[m] for v in results.values() if m in v] for m in names]
    table.add_row("[bold]mean[/]", *[f"[bold]{sum(v) / len(v):.4f}[/]" for v in means], end_section=True)
    return table
