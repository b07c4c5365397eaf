"""torch's CPU threads (``perf.threads``) on an idle machine and on one shared with other work.

A training step (forward, masked losses, backward, AdamW) of the default compact CNN on a batch
of generated scenes, timed at each thread count side by side (the counts alternate in one
process), first alone, then while ``--busy`` other processes each keep a core busy (as another
job on a shared machine does). torch's default is every physical core; when some are taken, its
threads wait on each other at every operation, and fewer threads go faster.

    python benchmarks/threads.py [--repeats 9] [--batch-size 128] [--busy 1]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
from typing import Any, Callable

import torch
from defaults import adamw_step, scenes_batch
from timing import alternate

from mhc.model import MultiHeadNet
from mhc.training.speed import cpu_budget


def spin() -> None:
    """Keep one core busy until terminated."""
    while True:
        pass


def training_step(net: MultiHeadNet, batch: dict[str, Any], threads: int) -> Callable[[], None]:
    """A step of its own copy of ``net`` at ``threads`` threads."""
    step = adamw_step(copy.deepcopy(net), batch)

    def threaded() -> None:
        torch.set_num_threads(threads)
        step()

    return threaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--busy", type=int, default=1, help="processes keeping a core busy in the shared runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    tasks, batch = scenes_batch(args.batch_size)
    net = MultiHeadNet({"name": "cnn"}, tasks).train()
    counts = list(range(1, cpu_budget() + 1))
    steps = [training_step(net, batch, threads) for threads in counts]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, cpu_budget() {cpu_budget()}; compact CNN, scenes 64x64, "
          f"7 heads, batch {args.batch_size}; ms per training step (ratio to {counts[-1]} threads, torch's default here)")
    print("| machine | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for label, busy in (("idle", 0), (f"{args.busy} core(s) busy with other work", args.busy)):
        others = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for other in others:
            other.start()
        try:
            times = alternate(steps, args.repeats, warmup=2)
        finally:
            for other in others:
                other.terminate()
        cells = [f"{t * 1e3:.0f} ({t / times[-1]:.2f}x)" for t in times]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
