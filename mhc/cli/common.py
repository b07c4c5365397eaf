"""What the commands share: Hydra wiring on the packaged configs, messages and tables.

A command parses its arguments here, calls :mod:`mhc.api`, and prints what it returns. An
:class:`~mhc.errors.MhcError` is printed as the one line ``error: <message>`` with exit code 1.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mhc.api.calibrate import summary_rows
from mhc.api.config import register_resolvers
from mhc.cli.hydra_errors import one_line
from mhc.config import CONFIG_SEARCH_PATH, check_config
from mhc.errors import MhcError



class RunConsole(Console):
    """The console (stderr), whose every message and table is also kept, as plain text, in the
    run folder's log file (Hydra's ``<command>.log``, e.g. ``train.log``): a run started in the
    background keeps its final tables, checkpoint paths and errors."""

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*objects, **options)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler) and handler.stream is not None:
                Console(file=handler.stream, width=120, soft_wrap=True).print(*objects, **options)
                handler.flush()


console = RunConsole(stderr=True, soft_wrap=True)  # one message, one line, whatever the terminal width
register_resolvers()


class ConsoleHandler(logging.Handler):
    """The library's messages (logger ``mhc``) on the console: ``warning: ...`` for warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "[yellow]warning:[/] " if record.levelno >= logging.WARNING else ""
        console.print(prefix + escape(record.getMessage()), highlight=False, soft_wrap=True)


def show_library_messages() -> None:
    """Send the library's INFO and WARNING messages to the console, once (not through Hydra's
    job logging, whose format and log file are for the run's own records)."""
    logger = logging.getLogger("mhc")
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@hydra.main`` on the packaged configs (``pkg://mhc.conf``; ``--config-dir`` adds a folder
    of the user's own), printing an :class:`MhcError` as one line (exit 1)."""

    def decorator(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        held = HeldErrors(config_name)

        @functools.wraps(fn)
        def guarded(cfg: DictConfig) -> Any:
            held.release()
            show_library_messages()
            try:
                check_config(cfg, config_name)
                return fn(cfg)
            except MhcError as err:
                print_error(err)
                discard_empty_run()
                sys.exit(1)

        composed = hydra.main(version_base="1.3", config_path=CONFIG_SEARCH_PATH, config_name=config_name)(guarded)

        @functools.wraps(fn)
        def command() -> Any:
            with held:
                return composed()

        return command

    return decorator


def discard_empty_run() -> None:
    """A run stopped by bad input before it wrote anything of its own leaves no run folder behind:
    one holding only what Hydra put there (``.hydra/``, the log) and empty folders (a logger's
    ``csv/version_0``) is removed. A folder holding anything else (an earlier run's checkpoints,
    the user's files), or the current folder, is kept whole."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    hydras = {name for name in (hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log") if name}
    if (not folder.is_dir() or folder == Path.cwd().resolve()
            or any(path.name not in hydras and holds_files(path) for path in folder.iterdir())):
        return
    for handler in logging.getLogger().handlers:  # the log file Hydra opened
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(folder)


def holds_files(path: Path) -> bool:
    """Whether ``path`` is a file (or a link), or a folder with one somewhere under it."""
    return not path.is_dir() or path.is_symlink() or any(holds_files(child) for child in path.iterdir())


class HeldErrors:
    """Holds what is written to stderr until the command runs: if Hydra fails to compose the
    config first, its several lines become the one line ``error: ...`` (:mod:`mhc.cli.hydra_errors`)."""

    def __init__(self, config_name: str) -> None:
        self.config_name = config_name
        self.stderr: Any = None  # the real stderr while holding
        self.held = io.StringIO()

    def __enter__(self) -> "HeldErrors":
        self.stderr, self.held = sys.stderr, io.StringIO()
        sys.stderr = self.held
        return self

    def release(self) -> None:
        """Stop holding, and write out what was held (the command runs and prints its own errors)."""
        if self.stderr is not None:
            sys.stderr, self.stderr = self.stderr, None
            sys.stderr.write(self.held.getvalue())

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.stderr is None:
            return  # released: the command ran and printed its own errors
        printed = self.held.getvalue()
        sys.stderr, self.stderr = self.stderr, None
        if isinstance(error, SystemExit) and error.code not in (0, None) and printed.strip():
            print_error(one_line(printed, self.config_name, sys.argv[1:]))
        else:
            sys.stderr.write(printed)


def print_error(err: Exception) -> None:
    """An error as the one line ``error: <message>`` on stderr (data quoted in it printed as is)."""
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)


def results_table(results: dict[str, dict[str, float]], title: str) -> Table:
    """A rich table: one row per head, one column per metric (F1 first: what checkpoints are
    chosen on by default), and a mean row."""
    order = ["f1", "f1_open", "acc", "acc_open", "auroc", "loss"]
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


def calibration_table(report: dict[str, Any]) -> Table:
    """A rich table of a calibration report: per task and split, ECE and Brier before and after,
    and the fitted temperatures and thresholds."""
    table = Table(title=f"calibration on {report['split']} ({report['method']})", title_justify="left")
    for column in ("task", "split", "ECE before", "after", "Brier before", "after", "temperature", "thresholds"):
        table.add_column(column, justify="left" if column in ("task", "split") else "right")
    for row in summary_rows(report):
        table.add_row(*row)
    return table
