"""Where training augmentation runs: each sample in the loader (``augment.where=loader``) or whole
batches where they are (``augment.where=device``), and the in-memory image cache (``data.cache``).

One synthetic image manifest (JPEG files of ``--size`` pixels, three tasks, one with a flip map)
is read through ``ManifestDataModule`` as ``mhc-train`` reads it. Each variant runs a full pass
over the training loader, augmenting every batch as training would (the device variant calls the
same ``Augmentation.batch`` the module calls), with no network, so the figures are the cost of
reading and augmenting alone. The variants alternate over ``--repeats`` runs; the table gives
the median set-up time (the cache decodes every image once there), the median seconds of one
epoch's pass, and its images per second.

    python benchmarks/augment_place.py [--images 4096] [--size 32] [--repeats 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mhc.data import ManifestDataModule
from mhc.data.augment import Augmentation
from mhc.tasks import TaskSpec


def write_manifest(folder: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    rows = ["image,side,kind,tags"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.jpg", quality=90)
        rows.append(f"img/{i}.jpg,{'left' if i % 2 else 'right'},{'a' if i % 3 else 'b'},{'x|y' if i % 5 else 'y'}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


def one_pass(train: Path, size: int, where: str, cache: str, workers: int) -> tuple[float, float]:
    """Seconds to set the training split up (reading the manifest; decoding every image once with
    ``cache=memory``), and for one augmented pass over its loader (an epoch's reading)."""
    start = time.perf_counter()
    data = ManifestDataModule(train, image_size=[size, size], batch_size=256, num_workers=workers, cache=cache,
                              persistent_workers=False)
    tasks = [TaskSpec("side", "multiclass", ["left", "right"], hflip={"left": "right"}),
             *[t for t in data.task_specs() if t.name != "side"]]
    data.set_tasks(tasks)
    augmentation = Augmentation(crop="pad", padding=2, hflip=0.5, where=where, tasks=tasks)
    data.use_augmentation(augmentation)
    data.setup("fit")
    ready = time.perf_counter()
    count = 0
    for batch in data.train_dataloader():
        if where == "device":
            batch = augmentation.batch(batch)
        count += len(batch["image"])
    assert count == len(data.splits["train"])
    return ready - start, time.perf_counter() - ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    variants = [("loader", "none"), ("device", "none"), ("loader", "memory"), ("device", "memory")]
    with tempfile.TemporaryDirectory() as folder:
        train = write_manifest(Path(folder), args.images, args.size)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for where, cache in variants:
                times[(where, cache)].append(one_pass(train, args.size, where, cache, args.workers))
    medians = {v: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for v, ts in times.items()}
    base = medians[("loader", "none")][1]
    print(f"{args.images} images of {args.size} px, {args.workers} loader workers, median of {args.repeats} runs")
    print(f"{'augment.where':>14} {'data.cache':>10} {'set-up s':>9} {'epoch s':>8} {'images/s':>9} {'epoch vs loader+none':>21}")
    for where, cache in variants:
        setup, epoch = medians[(where, cache)]
        print(f"{where:>14} {cache:>10} {setup:9.2f} {epoch:8.2f} {args.images / epoch:9.0f} {base / epoch:20.2f}x")


if __name__ == "__main__":
    main()
