"""Samples/s the default data pipeline delivers against samples/s the default training step consumes.

The pipeline is the train DataLoader of the default scenes data module (batch 128,
``num_workers=0``: per-sample decoding and label encoding, then collation); the step is the
default compact CNN's forward, masked losses, backward and AdamW step on one such batch, set up
as ``mhc-train`` runs it by default (channels_last; bf16 autocast on a CPU with native bfloat16).
The two alternate in one process (``--batches`` loader batches against as many steps), medians
over repeats; the pipeline should be several times faster, so it never starves training.

    python benchmarks/data_pipeline.py [--repeats 5] [--batches 4]
"""

from __future__ import annotations

import argparse
from typing import Callable, Iterator

import torch
from defaults import as_trained, default_autocast, describe
from timing import alternate

from mhc.data import ScenesDataModule
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet

BACKBONE = {"name": "cnn", "widths": [32, 64, 128, 128], "stem_stride": 2}


def endless(data: ScenesDataModule) -> Iterator[dict]:
    while True:
        yield from data.train_dataloader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4, help="batches per timed call")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = ScenesDataModule(seed=0)  # the defaults of mhc/conf/data/scenes.yaml
    data.set_tasks(data.task_specs())
    data.setup("fit")
    batches = endless(data)
    batch = next(batches)
    net = as_trained(MultiHeadNet(BACKBONE, data.tasks).train())
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.05)

    def load() -> None:
        for _ in range(args.batches):
            next(batches)

    def train() -> None:
        for _ in range(args.batches):
            with default_autocast():
                loss = sum(batch_losses(net.tasks, net.hierarchy, net(batch["image"]), batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    steps: list[Callable[[], None]] = [load, train]
    load_seconds, train_seconds = alternate(steps, args.repeats, warmup=1)
    samples = args.batches * data.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scenes 64x64, 7 heads, batch {data.batch_size}, "
          f"num_workers {data.num_workers}, cnn {BACKBONE['widths']}, {describe()}")
    print("| data loader (samples/s) | training step (samples/s) | loader / step |")
    print("|---:|---:|---:|")
    print(f"| {samples / load_seconds:.0f} | {samples / train_seconds:.0f} | {train_seconds / load_seconds:.1f} |")


if __name__ == "__main__":
    main()
