"""Training and masked-modeling pretraining, as ``mhc-train`` and ``mhc-pretrain`` run them."""

from __future__ import annotations

import difflib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from mhc.api.build import (
    backbone_for_data,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_optimizer,
    build_trainer,
    instantiate,
)
from mhc.api.calibrate import calibrate_module, save_report
from mhc.api.config import ConfigLike, as_config
from mhc.api.recipe import AUTO, auto_config
from mhc.api.resume import (
    check_compatible,
    check_new_folder,
    checkpoint_folder,
    continued_options,
    read_resumed,
    remove_temporaries,
    resolve_resume,
)
from mhc.config import check_config
from mhc.data.profile import profile_data
from mhc.errors import ConfigError
from mhc.io import read_checkpoint, save_backbone, update_checkpoint
from mhc.training.flips import FlipCheck
from mhc.training.pretraining import PretrainModule
from mhc.training.selection import HeadSelection, swap_in_best_heads
from mhc.training.speed import use_threads

log = logging.getLogger(__name__)
Results = dict[str, dict[str, float]]  # {task: {metric: value}}


@dataclass
class TrainResult:
    """What a training run produced.

    ``metrics`` holds per-head results by split (``{"val": {task: {metric: value}}, "test": ...}``)
    of the best checkpoint (of the last epoch where no checkpoint was kept).
    """

    output_dir: Path
    metrics: dict[str, Results]
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    log_dirs: dict[str, str] = field(default_factory=dict)  # {logger class name: its folder}
    calibration: dict[str, Any] | None = None  # calibrate=true: the report (mhc.api.calibrate)
    head_selection: dict[str, Any] | None = None  # callbacks=per_head: per head, whether its own best weights were kept
    monitor: str | None = None  # the metric that chose the best checkpoint (val/mean/f1 unless configured)
    score: float | None = None  # its value at the best checkpoint
    tta: str | None = None  # the test-time augmentation of the test (validation is always plain)

    def mean(self, metric: str = "f1", split: str = "val") -> float | None:
        """The mean over heads of ``metric`` on ``split`` (``None`` when no head reports it)."""
        values = [v[metric] for v in self.metrics.get(split, {}).values() if metric in v]
        return sum(values) / len(values) if values else None


def train(config: ConfigLike = None, *, output_dir: str | Path | None = None,
          config_dir: str | Path | None = None) -> TrainResult:
    """Fit a multi-head model, then validate (and, with ``test=true``, test) its best checkpoint.

    ``config`` is a composed config or ``mhc-train`` overrides (``["backbone=resnet18"]``);
    ``output_dir`` the run folder (default: a new one under ``outputs/train/``).
    """
    cfg = as_config(config, "train", output_dir, config_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    use_threads(cfg.perf.get("threads", "auto") if cfg.get("perf") else "auto")
    if cfg.get("recipe") == AUTO:  # experiment=auto: the choices made from the data, the command line's kept
        cfg = auto_config(cfg, profile_data(build_datamodule(cfg)), None if isinstance(config, DictConfig) else list(config or ()))
        check_config(cfg, "train")
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_resume(cfg.resume, run_dir.parent)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    check_monitors(callbacks, module)
    continue_checkpoints(module, callbacks, ckpt_path)
    trainer = build_trainer(cfg, module, datamodule, loggers, callbacks)
    with warnings.catch_warnings():  # the checkpoint folder was chosen and checked above (continue_checkpoints)
        warnings.filterwarnings("ignore", message="The dirpath has changed")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    saver = trainer.checkpoint_callback
    best = saver.best_model_path if saver else ""
    score = saver.best_model_score if saver and best else None
    test = bool(cfg.test) and datamodule.has_split("test")
    if cfg.test and not test:
        log.warning("test=true, but the data has no test split (data.test); the test is skipped")
    if best:  # the epoch-end metrics belong to the last epoch; report the best checkpoint's
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
    selection = next((c for c in trainer.callbacks if isinstance(c, HeadSelection)), None)
    flip_check = next((c for c in trainer.callbacks if isinstance(c, FlipCheck)), None)
    tta = flip_check.tta(cfg.get("tta")) if flip_check else cfg.get("tta")
    head_report = select_heads(module, datamodule, trainer, best, selection, test, tta) if selection and best else None
    calibration = None
    if cfg.calibrate and best:
        calibration = calibrate_best(cfg, module, datamodule, trainer, best, test)
    elif cfg.calibrate:
        log.warning("calibrate=true: no checkpoint was kept (callbacks.model_checkpoint), so nothing was calibrated")
    metrics = {"val": module.last_results.get("val", {})}
    if test and best:
        module.tta = tta  # the test alone: checkpoints are chosen on plain validation
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics["test"] = module.last_results.get("test", {})
        if head_report and any(entry["kept"] for entry in head_report.values()) and trainer.is_global_zero:
            for task, entry in head_report.items():  # the test figures of the choice made on validation
                entry["test"]["final"] = metrics["test"].get(task, {}).get(selection.tracker.metric)
            update_checkpoint(best, best, head_selection=head_report)
    log_dirs = {type(logger).__name__: str(logger.log_dir or logger.save_dir) for logger in trainer.loggers}
    finish_wandb(trainer.loggers)
    return TrainResult(output_dir=run_dir, metrics=metrics, best_checkpoint=Path(best) if best else None,
                       last_checkpoint=Path(best).with_name("last.ckpt") if best else None, log_dirs=log_dirs,
                       calibration=calibration, head_selection=head_report, monitor=saver.monitor if saver else None,
                       score=None if score is None else float(score), tta=tta if "test" in metrics else None)


def check_monitors(callbacks: list[Any], module: Any) -> None:
    """A callback that monitors a validation metric (checkpoints, early stopping) names one the
    module logs; a typo is one error now, not after an epoch with no checkpoint written."""
    logged = module.logged_names("val")
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("val/") and monitor not in logged:
            similar = difflib.get_close_matches(monitor, sorted(logged), n=3, cutoff=0.6)
            raise ConfigError(f"{type(callback).__name__} monitors '{monitor}', which validation does not log; "
                              f"{'similar: ' + str(similar) if similar else 'e.g. val/mean/acc, val/mean/f1, val/loss'} "
                              "(val/<task>/<metric>, val/mean/<metric>, val/loss, val/delta_m with delta_m.baseline)")


def continue_checkpoints(module: Any, callbacks: list[Any], ckpt_path: str | None) -> None:
    """Point the checkpoint callbacks at the folder they write to (the resumed run's, when its
    checkpoint still lies there: :mod:`mhc.api.resume`), after checking that the resumed
    checkpoint fits ``module``, that the folder holds no other run's checkpoints, and removing
    what an interrupted write left there."""
    savers = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    continued = None
    if ckpt_path:
        checkpoint = read_resumed(ckpt_path)
        check_compatible(checkpoint, ckpt_path, module.net.config(),
                         {k: tuple(v.shape) for k, v in module.state_dict().items()})
        module.run_config = continued_options(checkpoint, module.run_config)
        log.info(f"resuming from {ckpt_path}")
        if savers:
            continued = checkpoint_folder(checkpoint, ckpt_path, savers[0].dirpath)
    for saver in savers:
        folder = continued or Path(saver.dirpath)
        check_new_folder(folder, continued)
        saver.dirpath = str(folder)
        remove_temporaries(folder)


def select_heads(module: Any, datamodule: Any, trainer: pl.Trainer, best: str, selection: HeadSelection,
                 test: bool, tta: str | None = None) -> dict[str, dict[str, Any]]:
    """``callbacks=per_head``: put each head's own best weights on the best checkpoint's backbone
    where validation improves (:func:`~mhc.training.selection.swap_in_best_heads`), store the
    heads kept and the report in the best checkpoint, and log the report. With ``test`` the
    report also gives each head's test metric before the swap (``test.checkpoint``) and, after
    the final test, with the heads kept (``test.final``), both with test-time augmentation ``tta``."""
    epoch = int(read_checkpoint(best)["epoch"])

    def run(stage: Any, split: str) -> dict[str, dict[str, float]]:
        module.tta = tta if split == "test" else None  # as the final test; validation always plain
        stage(module, datamodule=datamodule, verbose=False)
        module.tta = None
        return module.last_results.get(split, {})

    metric = selection.tracker.metric
    candidates = [t for t in selection.weights if selection.tracker.epoch.get(t) != epoch]
    before_test = run(trainer.test, "test") if test and candidates else {}
    report = swap_in_best_heads(module, selection, epoch, module.last_results.get("val", {}),
                                lambda: run(trainer.validate, "val"))
    kept = [task for task, entry in report.items() if entry["kept"]]
    for task, entry in report.items():
        before = before_test.get(task, {}).get(metric)
        entry["test"] = {"checkpoint": before, "final": None if kept else before}  # with heads kept: after the test
    if kept:
        run(trainer.validate, "val")  # the heads kept, together
    log.info("per-head selection on val " + metric + ": " + ", ".join(
        f"{task} {'swapped in epoch ' + str(e['own_best_epoch']) if e['kept'] else 'kept'}" for task, e in report.items()))
    if trainer.is_global_zero:
        weights = {f"heads.{task}.{key}": value for task in kept for key, value in module.net.heads[task].state_dict().items()}
        update_checkpoint(best, best, weights=weights, metrics=module.last_results.get("val", {}), head_selection=report)
    trainer.strategy.barrier("head selection")
    return report


def calibrate_best(cfg: DictConfig, module: Any, datamodule: Any, trainer: pl.Trainer, best: str,
                   test: bool) -> dict[str, Any]:
    """``calibrate=true``: calibrate the best checkpoint's heads (loaded in ``module``) on
    validation, validate again at the tuned thresholds, and store both in the best checkpoint;
    the report also goes to ``<run folder>/calibration/`` and the loggers."""
    report = calibrate_module(module, datamodule, "val", cfg.calibration_method,
                              report_splits=("test",) if test else ())
    trainer.validate(module, datamodule=datamodule, verbose=False)  # the metrics at the calibrated decisions
    if trainer.is_global_zero:
        update_checkpoint(best, best, tasks=module.tasks.values(), metrics=module.last_results.get("val", {}),
                          calibration=report)
        save_report(report, Path(cfg.paths.output_dir) / "calibration", trainer.loggers, trainer.global_step)
    trainer.strategy.barrier("calibration")
    return report


def finish_wandb(loggers: list[Any]) -> None:
    """End the wandb run, so the next job of a multirun (or the next call) starts its own."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


@dataclass
class PretrainResult:
    """The pretrained backbone's folder (for ``backbone.pretrained=``) and the validation metrics."""

    output: Path
    objective: str
    metrics: dict[str, float]


def build_pretrain_module(cfg: DictConfig, datamodule: Any) -> PretrainModule:
    datamodule.set_tasks([])  # labels are ignored
    processor = datamodule.processor()
    net_config = {"backbone": backbone_for_data(cfg, processor), "tasks": [], "processor": processor.to_dict()}
    options = OmegaConf.to_container(cfg.objective, resolve=True)
    optimizer, _ = build_optimizer(cfg)  # pretraining trains every depth alike
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    return PretrainModule(net_config, cfg.objective.name, options, optimizer=optimizer, scheduler=scheduler)


def pretrain(config: ConfigLike = None, *, output_dir: str | Path | None = None,
             config_dir: str | Path | None = None) -> PretrainResult:
    """Masked-modeling pretraining of the configured backbone on the data's inputs (labels
    ignored); the backbone is saved to ``output`` (``backbone.safetensors`` and ``backbone.json``)."""
    cfg = as_config(config, "pretrain", output_dir, config_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_pretrain_module(cfg, datamodule)
    ckpt_path = resolve_resume(cfg.resume, Path(cfg.paths.output_dir).parent)
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, module, datamodule, loggers, build_callbacks(cfg, has_logger=bool(loggers)))
    log.info(f"pretraining {module.net.backbone_config['name']} with '{module.objective_name}'")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    output = save_backbone(module.net, cfg.output, {"objective": module.objective_name, "metrics": metrics})
    return PretrainResult(output=Path(output), objective=module.objective_name, metrics=metrics)
