"""Training throughput of ``Trainer.fit`` on the mhc module against a plain PyTorch loop.

Both sides train the same network (ResNet-18 with the small-input stem and ViT-Tiny of mhc's
own, and timm's ResNet-50 and ConvNeXt-Tiny through ``backbone=timm``, at 64x64) on the same pre-collated batches of the generated scenes with AdamW, computing the same
masked losses (``mhc.losses.batch_losses``). The plain loop runs inside the fit, between
Lightning's epochs, so the two alternate epoch by epoch in one process; the table reports the
median samples/s of each over the timed epochs (the first epoch of each is a warm-up) and their
ratio. An mhc epoch is timed from the end of the previous plain epoch to the end of its own, so
Lightning's work between epochs (epoch-end metrics, loop bookkeeping) counts against it.

    python benchmarks/loop_overhead.py [--batches 3] [--repeats 3] [--backbones resnet18,vit_tiny,timm_resnet50,timm_convnext_tiny]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from timing import timed
from torch.utils.data import DataLoader

from mhc.data import ScenesDataModule
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet
from mhc.training import MultiHeadModule
from mhc.training.speed import apply_speed_options

BACKBONES = {
    "resnet18": ({"name": "resnet18", "small_input": True}, 16),
    "vit_tiny": ({"name": "vit_tiny", "image_size": 64, "patch_size": 8, "dim": 192, "depth": 6, "num_heads": 3,
                  "dropout": 0.0, "pool": "cls"}, 64),
    "timm_resnet50": ({"name": "timm", "model": "resnet50"}, 16),
    "timm_convnext_tiny": ({"name": "timm", "model": "convnext_tiny"}, 16),
}


def adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.05)


def plain_epoch(net: MultiHeadNet, batches: list[dict[str, Any]]) -> Callable[[], None]:
    """One epoch of a hand-written loop: forward, masked losses, backward, AdamW step."""
    optimizer = adamw(net.parameters())

    def epoch() -> None:
        net.train()
        for batch in batches:
            logits = net(batch["image"])
            losses = batch_losses(net.tasks, net.hierarchy, logits, batch)
            loss = sum(net.tasks[name].weight * value for name, value in losses.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


class Alternate(pl.Callback):
    """Runs ``other`` after every Lightning epoch and records the seconds of both."""

    def __init__(self, other: Callable[[], None]) -> None:
        self.other = other
        self.fit_seconds: list[float] = []
        self.other_seconds: list[float] = []
        self.mark = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.mark = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds.append(time.perf_counter() - self.mark)
        self.other_seconds.append(timed(self.other))
        self.mark = time.perf_counter()


def compare(backbone: dict[str, Any], batch_size: int, num_batches: int, repeats: int) -> tuple[float, float]:
    """Median samples/s of ``Trainer.fit`` and of the plain loop."""
    data = ScenesDataModule(num_train=batch_size * num_batches, num_val=10, num_test=10, batch_size=batch_size, seed=0)
    data.set_tasks(data.task_specs())
    batches = list(data.loader("train", shuffle=True))
    config = {"backbone": backbone, "tasks": [t.to_dict() for t in data.tasks], "processor": data.processor().to_dict()}
    torch.manual_seed(0)
    module = MultiHeadModule(config, optimizer=adamw)
    net = MultiHeadNet.from_config(config)
    apply_speed_options(net)  # the module's defaults (channels_last for a CNN, fused heads): the same model
    net.load_state_dict(module.net.state_dict())
    alternate = Alternate(plain_epoch(net, batches))
    trainer = pl.Trainer(max_epochs=1 + repeats, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         accelerator="cpu", devices=1, callbacks=[alternate])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    samples = batch_size * num_batches
    fit = samples / statistics.median(alternate.fit_seconds[1:])
    plain = samples / statistics.median(alternate.other_seconds[1:])
    return fit, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=3, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each side (after one warm-up)")
    parser.add_argument("--backbones", default="resnet18,vit_tiny")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, 7 heads, AdamW, "
          f"{args.batches} batches per epoch, median of {args.repeats} epochs after a warm-up")
    print("| backbone | batch | Trainer.fit (samples/s) | plain loop (samples/s) | fit / plain |")
    print("|---|---:|---:|---:|---:|")
    for name in args.backbones.split(","):
        backbone, batch_size = BACKBONES[name]
        fit, plain = compare(backbone, batch_size, args.batches, args.repeats)
        print(f"| {name} | {batch_size} | {fit:.1f} | {plain:.1f} | {fit / plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
