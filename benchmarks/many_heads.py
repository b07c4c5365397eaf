"""Cost of many heads: a training step with 40 binary heads against one with a single head.

Both models share the default compact CNN backbone, set up as ``mhc-train`` trains it by default
on this machine (channels_last; bf16 autocast on a CPU with native bfloat16); steps alternate in one process, and the
table reports medians over repeats and their ratio. The 40 heads run fused (one matmul for
every single-layer head, the default) and one by one (``MultiHeadNet.fuse_heads = False``). The
per-head metrics are those of the training stage (accuracy, F1 and the loss, per head). The
last row times the heads alone: their forward, losses and backward on given features.

    python benchmarks/many_heads.py [--repeats 15] [--batch-size 128]
"""

from __future__ import annotations

import argparse

import torch
from defaults import as_trained, default_autocast, describe
from timing import alternate

from mhc.losses import task_loss
from mhc.metrics import HeadMetrics
from mhc.model import MultiHeadNet
from mhc.predictor import OutputDecoder
from mhc.tasks import TaskSpec

BACKBONE = {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2}


def make_step(num_heads: int, batch_size: int, with_metrics: bool = False, fused: bool = True, heads_only: bool = False):
    tasks = [TaskSpec(f"attr{i}", "binary", ["no", "yes"], masked=True) for i in range(num_heads)]
    net = as_trained(MultiHeadNet(BACKBONE, tasks))
    net.fuse_heads = fused
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    metrics = HeadMetrics({t.name: t for t in tasks}, auroc=False)  # as the training stage measures them
    decoder = OutputDecoder(tasks)
    images = torch.rand(batch_size, 3, 64, 64)
    targets = {t.name: (torch.rand(batch_size) < 0.5).float() for t in tasks}
    masks = {t.name: torch.rand(batch_size) < 0.9 for t in tasks}
    features = torch.randn(batch_size, net.backbone.num_features, requires_grad=True)

    def step() -> None:
        with default_autocast():
            logits = net.forward_heads(features) if heads_only else net(images)
            losses = {t.name: task_loss(t, logits[t.name], targets[t.name], masks[t.name]) for t in tasks}
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if with_metrics:
            metrics.update(decoder.probabilities({k: v.detach() for k, v in logits.items()}), targets, masks, losses)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, 64x64, compact CNN, {describe()}")
    print("| step | 1 head (ms) | 40 heads, fused (ms) | ratio | 40 heads, one by one (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {"train step": {}, "train step + per-head metrics": {"with_metrics": True}, "heads alone": {"heads_only": True}}
    for label, options in rows.items():
        steps = [make_step(1, args.batch_size, **options), make_step(40, args.batch_size, **options),
                 make_step(40, args.batch_size, fused=False, **options)]
        one, fused, separate = alternate(steps, args.repeats)
        print(f"| {label} | {one * 1e3:.1f} | {fused * 1e3:.1f} | {fused / one:.3f} | {separate * 1e3:.1f} | {separate / one:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
