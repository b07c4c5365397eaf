"""What the Hydra entry points share: building objects from the config, and clean errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
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


def build_datamodule(cfg: DictConfig) -> Any:
    return instantiate(cfg.data, "data")


def checkpoint_with_data(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """The module of ``cfg.ckpt``, the configured data serving the checkpoint's tasks, and a
    Trainer for evaluation or prediction (no logger, no checkpoints)."""
    from mhc.training import MultiHeadModule

    module = MultiHeadModule.from_checkpoint(cfg.ckpt)
    datamodule = build_datamodule(cfg)
    datamodule.set_tasks(list(module.tasks.values()))
    trained, served = list(module.net.preprocess.image_size), list(datamodule.preprocess()["image_size"])
    if trained != served:
        raise ConfigError(f"data.image_size is {served} but the checkpoint was trained at {trained}; set data.image_size={trained}")
    # One process: a distributed sampler would pad the split with repeated samples.
    trainer = instantiate(cfg.trainer, "trainer", logger=False, enable_checkpointing=False, callbacks=[],
                          devices=1, num_nodes=1, strategy="auto")
    return module, datamodule, trainer


def config_tasks(cfg: DictConfig, provided: list[TaskSpec]) -> list[TaskSpec]:
    """The data's tasks with the ``head`` and ``loss`` defaults, then ``tasks.<name>`` options, applied."""
    head = OmegaConf.to_container(cfg.head, resolve=True)
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    overrides = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.get("tasks") else {}
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


def build_callbacks(cfg: DictConfig) -> list[Any]:
    return [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]


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
