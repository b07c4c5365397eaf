"""Streaming shards at scale, simulated: generated data sets of 10,000 to 1,000,000 small images
written as shards, then one epoch of each streamed through ``data=shards``'s training loader,
with the memory it takes and the rate it reads (docs/scaling.md); and the rate one thread
decodes an ImageNet-sized JPEG, for projecting to full-size images.

The images are a pool of 1,000 generated scenes at 32x32 (PNG, as ``mhc-shard`` stores them),
repeated with distinct rows and labels: what is measured is the streaming, not the drawing. Each
epoch runs in a fresh process (``num_workers=0``, batch 256) that reports its peak resident
memory (``VmHWM``), its peak anonymous memory (``RssAnon``, sampled every 50 batches: memory the
process owns, as opposed to pages of the chunk files the kernel maps and may drop), and samples/s.

    python benchmarks/shard_scale.py --sizes 10000,100000,1000000 [--folder /big/disk/tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mhc.data.generated import generate_split, scene_tasks
from mhc.data.shards import DESCRIPTION, describe, encode_image
from mhc.processing.processors import ImageProcessor

TASKS = ("shape", "tone")
POOL = 1000


def write(folder: Path, size: int) -> float:
    """``size`` samples as shards in ``folder`` (the layout ``mhc-shard`` writes); seconds taken."""
    from litdata.streaming.writer import BinaryWriter

    images, labels = generate_split(POOL, seed=0, missing_fraction=0.0)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    pixels = torch.nn.functional.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True)
    pool = [encode_image(p, "png", 95) for p in pixels]
    rng = np.random.default_rng(0)
    tasks = [t for t in scene_tasks() if t.name in TASKS]
    start = time.perf_counter()
    writer = BinaryWriter(str(folder / "train"), chunk_bytes="64MB")
    for row in range(size):
        writer.add_item(row, {"row": row, "name": f"row {row + 1}", "image": pool[row % POOL],
                              "labels": {t.name: int(rng.integers(t.num_classes)) for t in tasks}})
    writer.done()
    writer.merge()
    description = describe(tasks, ImageProcessor(size=[32, 32]), "png", {"train": size})
    (folder / DESCRIPTION).write_text(json.dumps(description))
    return time.perf_counter() - start


def memory() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def epoch(folder: str) -> None:
    """One streamed epoch in this process; prints a JSON line of what it measured."""
    from mhc.data import ShardsDataModule

    before = memory()
    data = ShardsDataModule(folder, val_split=None, test_split=None, batch_size=256)
    data.setup("fit")
    loader = data.train_dataloader()
    seen, anon = 0, before["RssAnon"]
    start = time.perf_counter()
    for index, batch in enumerate(loader):
        seen += len(batch["row"])
        if index % 50 == 0:
            anon = max(anon, memory()["RssAnon"])
    seconds = time.perf_counter() - start
    after = memory()
    print(json.dumps({"samples": seen, "seconds": seconds, "peak_rss": after["VmHWM"], "peak_anon": max(anon, after["RssAnon"]),
                      "start_anon": before["RssAnon"]}))


def decode_rate(side: int = 224, repeats: int = 300) -> float:
    """Images/s one thread decodes from a JPEG (quality 90) of an ImageNet-sized scene, resized to
    ``side``: the per-core cost a full-size data set pays where this benchmark's 32x32 PNGs are cheap."""
    from torchvision.io import decode_jpeg, encode_jpeg

    images, _ = generate_split(1, seed=1, missing_fraction=0.0)
    pixels = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float()
    large = torch.nn.functional.interpolate(pixels, size=(375, 500), mode="bilinear").clamp(0, 255).to(torch.uint8)[0]
    data = encode_jpeg(large, quality=90)
    processor = ImageProcessor(size=[side, side])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    for _ in range(repeats):
        processor.resize(decode_jpeg(data).float().div_(255))
    torch.set_num_threads(threads)
    return repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--folder", type=Path, default=None, help="where the shards are written (default: a temporary folder)")
    parser.add_argument("--epoch", help=argparse.SUPPRESS)  # the child process: stream one epoch of this folder
    args = parser.parse_args()
    if args.epoch:
        epoch(args.epoch)
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            folder = Path(tmp) / str(size)
            written = write(folder, size)
            on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            child = subprocess.run([sys.executable, __file__, "--epoch", str(folder)], capture_output=True, text=True, check=True)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            assert result["samples"] == size, result
            rows.append((size, on_disk, size / written, result))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 32x32 PNG samples, batch 256, num_workers 0")
    print(f"one thread decodes a 500x375 JPEG and resizes it to 224x224 at {decode_rate():,.0f} images/s")
    print("| samples | on disk | write samples/s | read samples/s | peak RSS | peak anonymous memory |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, on_disk, write_rate, result in rows:
        print(f"| {size:,} | {on_disk / 2**20:,.0f} MiB | {write_rate:,.0f} | {result['samples'] / result['seconds']:,.0f} | "
              f"{result['peak_rss'] / 2**20:,.0f} MiB | {result['peak_anon'] / 2**20:,.0f} MiB |")


if __name__ == "__main__":
    main()
