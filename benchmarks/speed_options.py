"""Speed options of a training step, side by side: float32 with none (the baseline) against
channels_last, bf16 autocast, both, torch.compile, and compile with bf16.

Every variant trains its own copy of the same network (same initial weights) on the same batch
of generated scenes (7 heads, masked losses, AdamW), set up by ``apply_speed_options`` as
``mhc-train`` does (``perf.channels_last``, ``perf.compile``; bf16 is Lightning's
``bf16-mixed``: autocast around the forward pass and losses). Steps alternate between the
variants in one process; the table reports medians over repeats and each one's ratio to the
baseline. The first compiled call (the compilation itself) is reported apart. channels_last
applies to convolutional backbones only.

    python benchmarks/speed_options.py [--repeats 9] [--batch-size 128] [--backbones cnn,vit_tiny]
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Callable

import torch
from defaults import adamw_step, bf16_autocast, scenes_batch
from mfu import BACKBONES
from timing import alternate

from mhc.model import MultiHeadNet
from mhc.training.speed import apply_speed_options, has_convolutional_backbone

# name: (channels_last, bf16, compile)
VARIANTS = {
    "float32": (False, False, False),
    "channels_last": (True, False, False),
    "bf16": (False, True, False),
    "channels_last + bf16": (True, True, False),
    "compile": (False, False, True),
    "compile + bf16": (False, True, True),
}
EXTRA_BACKBONES = {"resnet18": {"name": "resnet18", "small_input": True}}


def variant_step(base: MultiHeadNet, batch: dict[str, Any], channels_last: bool, bf16: bool, compile: bool) -> Callable[[], None]:
    net = copy.deepcopy(base)
    apply_speed_options(net, channels_last=channels_last, compile=compile)
    return adamw_step(net, batch, bf16_autocast(bf16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbones", default="cnn,vit_tiny", help="cnn, vit_tiny, resnet18")
    args = parser.parse_args()
    torch.manual_seed(0)
    tasks, batch = scenes_batch(args.batch_size)
    backbones = {**{name.split()[0]: (name, options) for name, options in BACKBONES.items()},
                 **{name: (name, options) for name, options in EXTRA_BACKBONES.items()}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, 7 heads, batch {args.batch_size}; "
          "step = forward, losses, backward, AdamW; ms (ratio to float32)")
    print("| backbone | " + " | ".join(VARIANTS) + " | compilation (s) |")
    print("|---|" + "---:|" * (len(VARIANTS) + 1))
    for key in args.backbones.split(","):
        label, options = backbones[key]
        base = MultiHeadNet(options, tasks).train()
        names = [n for n, (channels_last, _, _) in VARIANTS.items() if not channels_last or has_convolutional_backbone(base)]
        steps = [variant_step(base, batch, *VARIANTS[n]) for n in names]
        start = time.perf_counter()
        steps[names.index("compile")]()
        compilation = time.perf_counter() - start
        times = dict(zip(names, alternate(steps, args.repeats, warmup=2)))
        cells = [f"{times[n] * 1e3:.0f} ({times[n] / times['float32']:.2f}x)" if n in times else "-" for n in VARIANTS]
        print(f"| {label} | " + " | ".join(cells) + f" | {compilation:.0f} |", flush=True)


if __name__ == "__main__":
    main()
