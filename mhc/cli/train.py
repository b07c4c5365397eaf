"""``mhc-train``: fit a multi-head model, test its best checkpoint, print a per-head table.

Examples::

    mhc-train                                   # built-in scenes, compact CNN, CSV logs
    mhc-train backbone=resnet18 tasks.shape.loss=focal logger=tensorboard
    mhc-train data=manifest data.train=train.csv data.val=val.csv
    mhc-train resume=auto                       # continue the newest run from its last.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from mhc.cli.common import (
    auxiliary_tasks,
    build_callbacks,
    build_datamodule,
    build_loggers,
    chosen_option,
    config_tasks,
    console,
    hydra_app,
    instantiate,
    results_table,
)
from mhc.errors import ConfigError, MhcError
from mhc.io import read_checkpoint
from mhc.metrics import baseline_metrics
from mhc.model.backbones import list_backbones
from mhc.model.net import backbone_takes_tokens
from mhc.model.tokenizer import tokenizer_from_dict
from mhc.tasks import tasks_to_dicts
from mhc.training import MultiHeadModule
from mhc.training.checkpoint_io import AtomicCheckpointIO


def resolve_resume(resume: str | None, output_root: Path) -> str | None:
    """A checkpoint path from ``resume``: a file, a run directory, or ``auto`` (newest run)."""
    if not resume:
        return None
    if resume == "auto":
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise ConfigError("resume=auto is ambiguous in a multirun (jobs share one sweep folder); give each job its checkpoint path")
        candidates = sorted(output_root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            console.print(f"[yellow]warning:[/] resume=auto found no last.ckpt under {output_root}; starting afresh")
            return None
        return str(candidates[-1])
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at '{path}'")
    return str(path)


def build_module(cfg: DictConfig, datamodule: Any) -> MultiHeadModule:
    tasks = config_tasks(cfg, datamodule.task_specs())
    datamodule.set_tasks(tasks)
    preprocess = datamodule.preprocess()
    backbone = backbone_for_data(cfg, preprocess)
    net_config = {"backbone": backbone, "tasks": tasks_to_dicts(tasks), "preprocess": preprocess}
    optimizer = instantiate(cfg.optimizer, "optimizer") if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    weighting = OmegaConf.to_container(cfg.weighting, resolve=True) if cfg.get("weighting") else None
    trainer = cfg.get("trainer") or {}
    baseline = cfg.delta_m.baseline
    if baseline is not None:
        baseline = baseline_metrics(OmegaConf.to_container(baseline) if isinstance(baseline, DictConfig) else str(baseline),
                                    cfg.delta_m.metric)
    return MultiHeadModule(net_config, optimizer=optimizer, scheduler=scheduler, auxiliary=auxiliary_tasks(cfg),
                           weighting=weighting, accumulate_grad_batches=trainer.get("accumulate_grad_batches") or 1,
                           gradient_clip_val=trainer.get("gradient_clip_val"), backbone_lr_scale=cfg.backbone_lr_scale,
                           baseline=baseline, baseline_metric=cfg.delta_m.metric,
                           run_config=OmegaConf.to_container(cfg, resolve=True), nonfinite_loss=cfg.nonfinite_loss,
                           speed=OmegaConf.to_container(cfg.perf) if cfg.get("perf") else None)


def backbone_for_data(cfg: DictConfig, preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone options fitted to the data: a token backbone takes ``vocab_size`` from the
    data's tokenizer and ``max_length`` from the data's sequence length. A backbone that reads
    the other kind of input (token ids for images, or images for tokens) is a :class:`ConfigError`."""
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    tokenizer = preprocess.get("tokenizer")
    reads_tokens = backbone_takes_tokens(backbone)
    if reads_tokens != (tokenizer is not None):
        reads, gives = ("token ids", "images") if reads_tokens else ("images", "token ids")
        token_data = " or token data (data=sequences, or data=manifest with a 'text' column)" if reads_tokens else ""
        raise ConfigError(
            f"backbone={backbone.get('name')} reads {reads} but data={chosen_option(cfg, 'data')} gives {gives}; "
            f"choose a backbone that reads {gives} ({', '.join(backbones_reading(tokens=not reads_tokens))}){token_data}"
        )
    if tokenizer is not None:
        backbone["vocab_size"] = len(tokenizer_from_dict(tokenizer))
        backbone["max_length"] = int(preprocess["image_size"][-1])
    return backbone


def backbones_reading(tokens: bool) -> list[str]:
    """The registered backbones that read token ids (``tokens``) or images, for messages."""
    names = []
    for name in list_backbones():
        try:
            if backbone_takes_tokens({"name": name}) == tokens:
                names.append(name)
        except MhcError:  # a backbone that cannot be built without options is left out of the hint
            continue
    return names


def train(cfg: DictConfig) -> dict[str, float]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_resume(cfg.resume, output_dir.parent)
    if ckpt_path:
        read_checkpoint(ckpt_path)  # one clear error for a missing, damaged or unsafe file
        console.print(f"resuming from {ckpt_path}")
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, has_logger=bool(loggers))
    if ckpt_path:  # keep best/last with the run being continued, so "best" spans the whole run
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.dirpath = str(Path(ckpt_path).parent)
    # Gradient methods step the optimizer themselves: the module accumulates and clips.
    manual = {} if module.automatic_optimization else {"accumulate_grad_batches": 1, "gradient_clip_val": None}
    if getattr(datamodule, "shards_itself", False):  # e.g. multi-source batches: no DistributedSampler
        manual["use_distributed_sampler"] = False
    trainer: pl.Trainer = instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()], **manual
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tables = []
    if best:  # the epoch-end metrics belong to the last epoch; report the best checkpoint's
        trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
    results = module.last_results.get("val", {})
    tables.append(("val", results))
    if cfg.test and best:
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        tables.append(("test", module.last_results.get("test", {})))
    if trainer.is_global_zero:
        for split, split_results in tables:
            if split_results:
                console.print(results_table(split_results, f"{split} metrics of the {'best' if best else 'last'} checkpoint"))
        if best:
            console.print(f"best checkpoint: {best}")
            console.print(f"last checkpoint: {Path(best).with_name('last.ckpt')}")
        for logger in trainer.loggers:
            console.print(f"{type(logger).__name__} logs: {logger.log_dir or logger.save_dir}")
    finish_wandb(trainer.loggers)
    return {f"{task}/{m}": v for task, values in results.items() for m, v in values.items()}


def finish_wandb(loggers: list[Any]) -> None:
    """End the wandb run, so the next job of a multirun (or the next call) starts its own."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    accs = [v for k, v in metrics.items() if k.endswith("/acc")]
    return sum(accs) / len(accs) if accs else None  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
