"""Sending figures and text to whichever experiment loggers a run has (TensorBoard, wandb, CSV)."""

from __future__ import annotations

from typing import Any, Iterable


def log_figure(loggers: Iterable[Any], tag: str, figure: Any, step: int = 0) -> None:
    """A matplotlib figure as an image: TensorBoard and wandb show it; CSV has no images."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(tag, figure, global_step=step, close=False)
        elif type(logger).__name__ == "WandbLogger":
            logger.log_image(key=tag, images=[figure], step=step)


def log_text(loggers: Iterable[Any], tag: str, text: str, step: int = 0) -> None:
    """Markdown text (TensorBoard renders it in its Text tab; wandb as an HTML panel)."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text(tag, text, global_step=step)
        elif type(logger).__name__ == "WandbLogger":
            import wandb

            logger.experiment.log({tag: wandb.Html(f"<pre>{text}</pre>")}, step=step)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed), imported lazily."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
