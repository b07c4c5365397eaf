"""One multi-head model against one single-task model per task, on five scene tasks.

Each model trains with the default compact CNN, AdamW and batch size for the same number of
epochs on the same samples; the table gives the wall time of all ``Trainer.fit`` runs (each
validates once per epoch) and every head's validation accuracy in both settings.

    python benchmarks/shared_backbone.py [--epochs 5] [--num-train 2000] [--tasks shape,size,position,tone,outlined]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import torch

from mhc.data import ScenesDataModule
from mhc.tasks import TaskSpec
from mhc.training import MultiHeadModule

BACKBONE = {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2}


def fit(tasks: list[TaskSpec], epochs: int, num_train: int) -> tuple[dict[str, float], float]:
    """Validation accuracy per head after ``epochs``, and the seconds ``Trainer.fit`` took."""
    data = ScenesDataModule(num_train=num_train, num_val=1000, num_test=10, batch_size=128, seed=0)
    data.set_tasks(tasks)
    pl.seed_everything(0, verbose=False)
    config = {"backbone": BACKBONE, "tasks": [t.to_dict() for t in tasks], "processor": data.processor().to_dict()}
    module = MultiHeadModule(config, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.05),
                             confusion=False)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    return {name: result["acc"] for name, result in module.last_results["val"].items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--tasks", default="shape,size,position,tone,outlined")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    specs = {t.name: t for t in ScenesDataModule().task_specs()}
    tasks = [specs[name] for name in args.tasks.split(",")]
    multi_acc, multi_seconds = fit(tasks, args.epochs, args.num_train)
    single_acc: dict[str, float] = {}
    single_seconds = 0.0
    for task in tasks:
        acc, seconds = fit([task], args.epochs, args.num_train)
        single_acc.update(acc)
        single_seconds += seconds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, cnn {BACKBONE['widths']}, "
          f"{args.num_train} training samples, batch 128, {args.epochs} epochs, AdamW 3e-3")
    print(f"wall time: {len(tasks)} single-task fits {single_seconds:.1f} s, one multi-head fit {multi_seconds:.1f} s, "
          f"speed-up {single_seconds / multi_seconds:.2f}x")
    print("| task | single-task val acc | multi-head val acc | difference (points) |")
    print("|---|---:|---:|---:|")
    for task in tasks:
        single, multi = single_acc[task.name], multi_acc[task.name]
        print(f"| {task.name} | {single:.3f} | {multi:.3f} | {100 * (multi - single):+.1f} |")
    mean_single = sum(single_acc.values()) / len(tasks)
    mean_multi = sum(multi_acc.values()) / len(tasks)
    print(f"| mean | {mean_single:.3f} | {mean_multi:.3f} | {100 * (mean_multi - mean_single):+.1f} |")


if __name__ == "__main__":
    main()
