"""Model FLOP utilisation of a training step: counted FLOPs over step time, against the FLOP
rate of a large matmul on the same machine, measured in the same process. Each backbone is
measured in float32 (against a float32 matmul) and in bf16 autocast with the default speed
options (channels_last for the CNN; against a bfloat16 matmul); ``mhc-train`` trains the CNN in
bf16 by default on a CPU with native bfloat16, transformers in float32.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward
pass (2 FLOPs per multiply-add; convolutions counted as their matmul-equivalent FLOPs;
elementwise ops, normalisation, softmax and the optimizer step are not counted, though they
take time). The step (forward, masked losses, backward, AdamW) alternates with the matmul in
one process, medians over repeats.

    python benchmarks/mfu.py [--repeats 7] [--batch-size 128] [--matmul 2048]
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
from defaults import bf16_autocast, scenes_batch
from timing import alternate
from torch.utils.flop_counter import FlopCounterMode

from mhc.losses import batch_losses
from mhc.model import MultiHeadNet
from mhc.training.speed import apply_speed_options

BACKBONES = {
    "cnn (default)": {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2},
    "vit_tiny": {"name": "vit_tiny", "image_size": 64, "patch_size": 8, "dim": 192, "depth": 6, "num_heads": 3,
                 "dropout": 0.0, "pool": "cls"},
}


def train_step(net: MultiHeadNet, batch: dict[str, Any], bf16: bool = False) -> tuple[Callable[[], None], Callable[[], None]]:
    """The optimizer-free forward and backward, and the full step with AdamW."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def forward_backward() -> None:
        with bf16_autocast(bf16):
            losses = batch_losses(net.tasks, net.hierarchy, net(batch["image"]), batch)
        sum(losses.values()).backward()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    return forward_backward, step


def counted_flops(run: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def matmul(size: int, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], None], int]:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return lambda: torch.mm(a, b), 2 * size**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the square float32 matmul")
    args = parser.parse_args()
    torch.manual_seed(0)
    tasks, batch = scenes_batch(args.batch_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, 7 heads, batch {args.batch_size}; "
          f"peak = {args.matmul}^2 matmul of the step's precision")
    print("| backbone | precision | GFLOP / step | step (ms) | achieved GFLOP/s | matmul GFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, backbone in BACKBONES.items():
        for precision, dtype in (("float32", torch.float32), ("bf16 autocast", torch.bfloat16)):
            net = MultiHeadNet(backbone, tasks).train()
            bf16 = dtype == torch.bfloat16
            if bf16:
                apply_speed_options(net)  # channels_last for the CNN, as mhc-train does
            forward_backward, step = train_step(net, batch, bf16)
            flops = counted_flops(forward_backward)
            peak_run, peak_flops = matmul(args.matmul, dtype)
            step_seconds, peak_seconds = alternate([step, peak_run], args.repeats, warmup=2)
            achieved, peak = flops / step_seconds, peak_flops / peak_seconds
            print(f"| {name} | {precision} | {flops / 1e9:.1f} | {step_seconds * 1e3:.0f} | {achieved / 1e9:.1f} | "
                  f"{peak / 1e9:.1f} | {achieved / peak:.1%} |", flush=True)


if __name__ == "__main__":
    main()
