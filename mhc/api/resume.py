"""Continuing a run with ``resume=``: which checkpoint it names, where the continued run writes
its checkpoints, and whether the checkpoint fits this run.

* A run folder (``resume=<run>``) continues from its ``last.ckpt``, or, when a run was killed
  while writing that file, from its newest other checkpoint; ``resume=auto`` does the same for
  the newest run with a checkpoint.
* Checkpoints are written where the resumed file's run wrote them when the file still lies
  there, so "best" spans the whole run; a copied or moved file is continued into this run's own
  folder, so nothing of the run it came from is ever replaced or deleted (Lightning deletes the
  "previous" best and last files it restores when they lie under its folder).
* The checkpoint's tasks, classes (in order), backbone and input processing must be this run's:
  a difference is one :class:`~mhc.errors.ConfigError` naming it, before any weights are loaded.
  Optimizer options continue from the checkpoint's optimizer state; a changed value is named in a
  warning and the checkpoint's value is what the run records.
* Temporary files of a checkpoint write cut off by a kill are removed from the folder written to.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from mhc.errors import CheckpointError, ConfigError
from mhc.model.backbones.base import LOAD_TIME_OPTIONS

log = logging.getLogger(__name__)

LAST = "last.ckpt"
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # mhc.io.atomic_path's name for a file being written
TASK_SHAPE = ("kind", "classes", "hidden")  # what a head's outputs mean and its parameters' shapes
CONTINUED = ("optimizer", "scheduler", "backbone_lr_scale")  # options the optimizer's restored state overrides


def resolve_resume(resume: str | None, output_root: Path) -> str | None:
    """The checkpoint ``resume`` names: a file, a run folder (its ``last.ckpt``, else its newest
    checkpoint), or ``auto`` (the newest run under ``output_root`` with a checkpoint)."""
    if not resume:
        return None
    if resume == "auto":
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise ConfigError("resume=auto is ambiguous in a multirun (jobs share one sweep folder); give each job its checkpoint path")
        found = [c for c in (newest_checkpoint(folder / "checkpoints") for folder in output_root.glob("*")) if c]
        if not found:
            log.warning(f"resume=auto found no checkpoint under {output_root}; starting afresh")
            return None
        return str(max(found, key=lambda path: path.stat().st_mtime))
    path = Path(resume)
    if path.is_dir():
        folder = path if path.name == "checkpoints" else path / "checkpoints"
        found = newest_checkpoint(folder)
        if found is None:
            raise ConfigError(f"resume: no checkpoint in '{folder}' (expected {LAST} or another *.ckpt)")
        return str(found)
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at '{path}'")
    return str(path)


def newest_checkpoint(folder: Path) -> Path | None:
    """``folder/last.ckpt``, else the newest ``*.ckpt`` there that is not empty (a kill while the
    last file was first written leaves only the run's best checkpoint)."""
    if (folder / LAST).is_file() and (folder / LAST).stat().st_size:
        return folder / LAST
    others = [p for p in folder.glob("*.ckpt") if p.is_file() and p.stat().st_size]
    return max(others, key=lambda p: p.stat().st_mtime) if others else None


def checkpoint_folder(checkpoint: Mapping[str, Any], path: str | Path, configured: str | Path) -> Path:
    """Where the continued run writes checkpoints: the folder the resumed file's run wrote it to
    when the file still lies there, else ``configured`` (this run's own folder)."""
    path = Path(path).absolute()
    written = {Path(state["dirpath"]).absolute() for key, state in (checkpoint.get("callbacks") or {}).items()
               if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping) and state.get("dirpath")}
    if path.parent in written:
        return path.parent
    log.info(f"resume: '{path}' is not in the folder its run wrote it to; this run writes its checkpoints to {configured}")
    return Path(configured)


def check_new_folder(folder: str | Path, continued: Path | None) -> None:
    """A run never writes its checkpoints over another run's: ``folder`` must hold none unless it
    is the folder of the run being continued."""
    folder = Path(folder).absolute()
    if continued is not None and folder == continued.absolute():
        return
    held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if held:
        run = folder.parent if folder.name == "checkpoints" else folder
        raise ConfigError(f"the run folder '{run}' already holds checkpoints ({', '.join(held[:3])}); "
                          f"continue that run with resume={run}, or give a new folder (hydra.run.dir=...)")


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoint writes cut off by a kill (those whose writing
    process is gone) from ``folder``; the paths removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp*"):
        match = TEMPORARY.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info(f"removed {len(removed)} temporary file(s) of an interrupted checkpoint write from {folder}")
    return removed


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0  # someone else's process: leave its file alone
    return True


def check_compatible(checkpoint: Mapping[str, Any], path: str | Path, net_config: Mapping[str, Any],
                     state_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The checkpoint's network is this run's: the same tasks with the same classes in the same
    order, the same backbone and input processing, and parameters of the same shapes; else one
    :class:`ConfigError` naming the first difference."""
    stored = checkpoint["mhc"].get("net") or {}
    where = f"resume: checkpoint '{path}'"
    tasks = {t["name"]: t for t in stored.get("tasks", [])}
    names = [t["name"] for t in net_config["tasks"]]
    if list(tasks) != names:
        raise ConfigError(f"{where} has tasks {list(tasks)}, this run {names}; a resumed run keeps its tasks")
    for task in net_config["tasks"]:
        for key in TASK_SHAPE:
            before, now = tasks[task["name"]].get(key), task.get(key)
            if before != now:
                raise ConfigError(f"{where} has task '{task['name']}' with {key} {before}, this run's data and config give "
                                  f"{now}; the heads' outputs would be read as other classes. Resume with the checkpoint's "
                                  f"{key}, or start a new run")
    for group in ("backbone", "processor"):
        for key, before, now in differences(stored.get(group) or {}, net_config[group]):
            if group == "backbone" and key.split(".")[0] in LOAD_TIME_OPTIONS:
                continue  # where the first weights came from: the checkpoint's weights replace them
            name = f"backbone.{key}" if group == "backbone" else f"input processing {key}"
            raise ConfigError(f"{where} has {name}={before!r}, this run {now!r}; "
                              "resume with the checkpoint's options, or start a new run")
    for key, value in checkpoint["state_dict"].items():
        if key in state_shapes and tuple(value.shape) != tuple(state_shapes[key]):
            raise ConfigError(f"{where} has parameter '{key}' of shape {list(value.shape)}, this run's model "
                              f"{list(state_shapes[key])}; resume with the checkpoint's options, or start a new run")


def continued_options(checkpoint: Mapping[str, Any], run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with the options the restored optimizer state overrides set to the
    checkpoint's values (a changed one is named in a warning: it would not be used)."""
    stored = checkpoint["mhc"].get("config") or {}
    recorded = dict(run_config)
    for group in CONTINUED:
        if group not in stored:
            continue
        changed = list(differences({group: stored[group]}, {group: run_config.get(group)}))
        if changed:
            shown = ", ".join(f"{key}={now!r} (checkpoint {before!r})" for key, before, now in changed[:4])
            log.warning(f"resume: {shown} not used: the optimizer and schedule continue from the checkpoint's state; "
                        "start a new run (with the checkpoint as backbone.pretrained or its weights) to change them")
            recorded[group] = stored[group]
    return recorded


def differences(before: Any, now: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, before, now)`` for every leaf where two nested mappings differ."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in list(before) + [k for k in now if k not in before]:
            yield from differences(before.get(key), now.get(key), f"{prefix}.{key}" if prefix else str(key))
    elif before != now:
        yield prefix, before, now


def read_resumed(path: str) -> dict[str, Any]:
    """The resumed checkpoint, read safely (one clear error for a missing, damaged or unsafe file)."""
    from mhc.io import read_checkpoint

    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint["mhc"].get("net"), Mapping):  # read_checkpoint saw the state dict
        raise CheckpointError(f"resume: checkpoint '{path}' describes no network")
    return checkpoint
