"""``mhc-pretrain``: masked-modeling pretraining of a backbone on unlabelled inputs.

The objective follows the backbone (``objective.name=auto``): MAE for ``vit_*``, masked
tokens for ``seq_*``, SimMIM for the CNNs. Labels in the data are ignored. The backbone is
saved to ``output`` for ``mhc-train backbone.pretrained=FOLDER``. Examples::

    mhc-pretrain backbone=vit_tiny                      # MAE on the built-in scenes
    mhc-pretrain backbone=seq_small                     # masked tokens on the built-in sequences
    mhc-pretrain backbone=vit_tiny objective.mae.mask_ratio=0.6 trainer.max_epochs=20
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from mhc.cli.common import build_callbacks, build_datamodule, build_loggers, console, hydra_app, instantiate
from mhc.cli.train import backbone_for_data, resolve_resume
from mhc.io import save_backbone
from mhc.pretrain.module import PretrainModule
from mhc.training.checkpoint_io import AtomicCheckpointIO


def build_pretrain_module(cfg: DictConfig, datamodule: Any) -> PretrainModule:
    datamodule.set_tasks([])  # labels are ignored
    preprocess = datamodule.preprocess()
    net_config = {"backbone": backbone_for_data(cfg, preprocess), "tasks": [], "preprocess": preprocess}
    options = OmegaConf.to_container(cfg.objective, resolve=True)
    optimizer = instantiate(cfg.optimizer, "optimizer") if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    return PretrainModule(net_config, cfg.objective.name, options, optimizer=optimizer, scheduler=scheduler)


def pretrain(cfg: DictConfig) -> Path:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    module = build_pretrain_module(cfg, datamodule)
    ckpt_path = resolve_resume(cfg.resume, Path(cfg.paths.output_dir).parent)
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", callbacks=build_callbacks(cfg, has_logger=bool(loggers)),
                                      logger=loggers or False, plugins=[AtomicCheckpointIO()])
    console.print(f"pretraining {module.net.backbone_config['name']} with '{module.objective_name}'")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    output = save_backbone(module.net, cfg.output, {"objective": module.objective_name, "metrics": metrics})
    if trainer.is_global_zero:
        console.print(f"validation loss {metrics.get('val/loss', float('nan')):.4f}")
        console.print(f"pretrained backbone written to {output}; fine-tune with: mhc-train backbone.pretrained={output}")
    return output


@hydra_app("pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
