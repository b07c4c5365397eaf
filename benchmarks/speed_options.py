"""Speed options of a training step, side by side: float32 (the default) against channels_last,
bf16 autocast, torch.compile, and compile with bf16, for the default compact CNN and ViT-Tiny.

Every variant trains its own copy of the same network (same initial weights) on the same batch
of generated scenes (7 heads, masked losses, AdamW); steps alternate between the variants in
one process, and the table reports medians over repeats and each one's ratio to float32. The
compile column's first call (the compilation itself) is reported apart.

    python benchmarks/speed_options.py [--repeats 9] [--batch-size 128] [--backbones cnn,vit_tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from typing import Any, Callable

import torch
from mfu import BACKBONES
from timing import alternate

from mhc.data import ScenesDataModule
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet

VARIANTS = ("float32", "channels_last", "bf16 autocast", "compile", "compile + bf16")


def variant_step(base: MultiHeadNet, batch: dict[str, Any], variant: str) -> Callable[[], None]:
    net = copy.deepcopy(base)
    images = batch["image"]
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if variant.startswith("compile"):
        net.compile()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    bf16 = variant.endswith("bf16") or variant == "bf16 autocast"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            losses = batch_losses(net.tasks, net.hierarchy, net(images), batch)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbones", default="cnn,vit_tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = ScenesDataModule(num_train=args.batch_size, num_val=10, num_test=10, batch_size=args.batch_size, seed=0)
    data.set_tasks(data.task_specs())
    batch = next(iter(data.loader("train", shuffle=True)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, 7 heads, batch {args.batch_size}; "
          "step = forward, losses, backward, AdamW")
    print("| backbone | " + " | ".join(f"{v} (ms)" for v in VARIANTS) + " | compilation (s) |")
    print("|---|" + "---:|" * (len(VARIANTS) + 1))
    for key in args.backbones.split(","):
        name = next(n for n in BACKBONES if n.split()[0] == key)
        base = MultiHeadNet(BACKBONES[name], data.tasks).train()
        steps = [variant_step(base, batch, v) for v in VARIANTS]
        start = time.perf_counter()
        steps[VARIANTS.index("compile")]()
        compilation = time.perf_counter() - start
        steps[VARIANTS.index("compile + bf16")]()
        times = alternate(steps, args.repeats, warmup=2)
        cells = [f"{t * 1e3:.0f} ({t / times[0]:.2f}x)" for t in times]
        print(f"| {name} | " + " | ".join(cells) + f" | {compilation:.0f} |", flush=True)


if __name__ == "__main__":
    main()
