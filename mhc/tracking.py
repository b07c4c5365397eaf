"""Sending figures and text to whichever experiment loggers a run has (TensorBoard, wandb, CSV)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any, Iterable, Mapping, Sequence

from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger whose HPARAMS tab lists the run: the resolved config,
    flattened (``trainer/max_epochs``), beside ``hp_metrics``, curves whose last values the table
    shows (the last ``val/mean/f1`` is the best checkpoint's, whose validation is logged last).

    Lightning writes the HPARAMS summaries only with metric values, which it logs as points of
    those curves (``hp_metric``); these summaries name the curves and add no points to them."""

    def __init__(self, *args: Any, hp_metrics: Sequence[str] = (), default_hp_metric: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)
        self.hp_metrics = [] if default_hp_metric else list(hp_metrics)  # Lightning's hp_metric column instead

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: dict[str, Any] | None = None, step: int | None = None) -> None:
        super().log_hyperparams(params, metrics, step)
        if metrics is None and self.hp_metrics:
            from torch.utils.tensorboard.summary import hparams

            params = vars(params) if isinstance(params, Namespace) else dict(params)
            flat = flatten(params.get("config") or params)  # the run config, where the module holds one
            writer = self.experiment._get_file_writer()
            for summary in hparams(flat, dict.fromkeys(self.hp_metrics, 0.0)):  # the values are not written
                writer.add_summary(summary)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings on one level, names joined by ``/``; values of the types TensorBoard's
    hparams take (others, lists and ``None`` among them, as text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


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
