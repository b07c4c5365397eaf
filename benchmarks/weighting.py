"""Every weighting method on the built-in scenes: mean validation accuracy over the heads after a
short training run (with the gradient source of the method's config), and the cost of one
training step against equal weighting (on both gradient sources, where the method has both).

The step cost is measured side by side: each method's step (forward, per-task gradients where
the method needs them, combination, backward, optimizer step) alternates with equal weighting's
on the same batch in one process; medians of repeats.

    python benchmarks/weighting.py [--epochs 3] [--num-train 2000] [--repeats 9] [--methods pcgrad,mgda]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import torch
from timing import alternate

from mhc.data import ScenesDataModule
from mhc.training import MultiHeadModule
from mhc.weighting import available, create

BACKBONE = {"name": "cnn", "widths": [16, 32, 64, 64], "stem_stride": 2}


def method_options(name: str) -> dict:
    """The method's packaged config, ``mhc/conf/weighting/<name>.yaml``."""
    from omegaconf import OmegaConf

    from mhc.config import config_dir

    return OmegaConf.to_container(OmegaConf.load(config_dir() / "weighting" / f"{name}.yaml"))


def build(data: ScenesDataModule, weighting: dict, seed: int = 0) -> MultiHeadModule:
    pl.seed_everything(seed, verbose=False)
    config = {"backbone": BACKBONE, "tasks": [t.to_dict() for t in data.tasks], "processor": data.processor().to_dict()}
    return MultiHeadModule(config, optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.05),
                           weighting=weighting, confusion=False, conflict_every=0)


def accuracy(data: ScenesDataModule, weighting: dict, epochs: int) -> tuple[float, float]:
    """Mean validation accuracy over the heads after ``epochs``, and the fit's wall time."""
    module = build(data, weighting)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    results = module.last_results["val"]
    return sum(r["acc"] for r in results.values()) / len(results), seconds


def step_function(module: MultiHeadModule, batch: dict):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.log = lambda *a, **k: None  # timing the step, not Lightning's logging
    module.log_dict = lambda *a, **k: None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.step(module, module.net, batch).objective.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--methods", default=",".join(m for m in available() if not m.startswith("test_")))
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = ScenesDataModule(num_train=args.num_train, num_val=500, num_test=10, batch_size=64, seed=0)
    data.set_tasks(data.task_specs())
    batch = next(iter(data.loader("train", shuffle=True)))
    equal = step_function(build(data, {"name": "equal"}).train(), batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes: {len(data.tasks)} heads, "
          f"{args.num_train} training samples, batch 64, cnn {BACKBONE['widths']}, {args.epochs} epochs, AdamW 3e-3")
    print("| method | gradients of | mean val acc | fit (s) | step (ms) | step / equal |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        weighting = method_options(name)
        kinds = ["representation", "parameters"] if create(name, 2).needs_grads and create(name, 2).representation_ok else [weighting.get("grads")]
        for grads in kinds:
            options = {**weighting, "grads": grads} if grads else weighting
            if grads == weighting.get("grads"):
                acc, fit_seconds = accuracy(data, options, args.epochs)
                fit = f"{acc:.3f} | {fit_seconds:.0f}"
            else:
                fit = "- | -"
            step = step_function(build(data, options).train(), batch)
            base, cost = alternate([equal, step], args.repeats)
            print(f"| {name} | {grads or '-'} | {fit} | {cost * 1e3:.0f} | {cost / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
