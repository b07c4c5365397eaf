"""litdata chunks against WebDataset tars: the same samples written as both, then read back in a
shuffled epoch, decoded the same way. What ``mhc-shard`` writes was chosen from these figures.

Each sample is what ``mhc-shard`` stores: the image encoded once (PNG at the data's size), its
row, and its labels. Writing times the container alone (the encoding is shared); reading times a
shuffled epoch in one process (``num_workers=0``), image decoding included, best of the repeats.

    python benchmarks/shard_formats.py --manifest /data/cifar10/train.csv [--rows 20000] [--image-size 32]
    python benchmarks/shard_formats.py            # 4,096 generated scenes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from defaults import describe
from torchvision.io import ImageReadMode, decode_image

from mhc.data import ManifestDataModule, ScenesDataModule
from mhc.data.shards import SampleWriter


def encoded_samples(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The stored samples of the data's first ``rows`` training rows."""
    if args.manifest:
        data = ManifestDataModule(str(args.manifest), image_size=[args.image_size] * 2, cache="none",
                                  ignore_columns=[c for c in open(args.manifest).readline().strip().split(",") if c.endswith("__allowed")])
    else:
        data = ScenesDataModule(cache_dir=tempfile.mkdtemp(), num_train=args.rows)
    dataset = data.build_split("train")
    tasks = data.active_tasks()
    writer = SampleWriter(dataset, tasks, "png", 95)
    samples = []
    for start in range(0, min(args.rows, len(dataset)), 256):
        samples += writer((start, min(args.rows, len(dataset), start + 256)))
    return samples


def write_litdata(samples: list[dict[str, Any]], folder: Path) -> None:
    from litdata.streaming.writer import BinaryWriter

    writer = BinaryWriter(str(folder), chunk_bytes="64MB")
    for index, sample in enumerate(samples):
        writer.add_item(index, sample)
    writer.done()
    writer.merge()


def write_webdataset(samples: list[dict[str, Any]], folder: Path, per_shard: int) -> None:
    import webdataset as wds

    folder.mkdir()
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            labels = {name: (value.tolist() if isinstance(value, np.ndarray) else value) for name, value in sample["labels"].items()}
            sink.write({"__key__": f"{sample['row']:09d}", "png": sample["image"], "json": json.dumps(labels).encode()})


def decode(image: bytes) -> torch.Tensor:
    return decode_image(torch.frombuffer(bytearray(image), dtype=torch.uint8), mode=ImageReadMode.RGB).float().div_(255)


def read_litdata(folder: Path) -> Callable[[], int]:
    from litdata import StreamingDataset

    dataset = StreamingDataset(str(folder), shuffle=True, drop_last=False, seed=0)

    def epoch() -> int:
        count = 0
        for sample in dataset:
            decode(sample["image"])
            count += 1
        return count

    return epoch


def read_webdataset(folder: Path) -> Callable[[], int]:
    import webdataset as wds

    urls = sorted(str(p) for p in folder.glob("*.tar"))
    dataset = wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000)

    def epoch() -> int:
        count = 0
        for sample in dataset:
            decode(sample["png"])
            json.loads(sample["json"])
            count += 1
        return count

    return epoch


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="a training manifest of image files (default: generated scenes)")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=10000, help="samples per WebDataset tar")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    samples = encoded_samples(args)
    rows: list[tuple[str, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, write, read in (("litdata chunks", write_litdata, read_litdata),
                                  ("WebDataset tars", lambda s, f: write_webdataset(s, f, args.per_shard), read_webdataset)):
            folder = Path(tmp) / name.split()[0]
            start = time.perf_counter()
            write(samples, folder)
            written = time.perf_counter() - start
            epoch = read(folder)
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                assert epoch() == len(samples)
                seconds.append(time.perf_counter() - start)
            rows.append((name, len(samples) / written, len(samples) / min(seconds), size_of(folder) / len(samples)))
    print(f"torch {torch.__version__}; {len(samples)} samples, PNG at {args.image_size}x{args.image_size}, {describe()}")
    print("| format | write samples/s | read samples/s (shuffled, decoded) | bytes/sample |")
    print("|---|---:|---:|---:|")
    for name, write_rate, read_rate, per_sample in rows:
        print(f"| {name} | {write_rate:,.0f} | {read_rate:,.0f} | {per_sample:,.0f} |")


if __name__ == "__main__":
    main()
