"""Samples/s each data source delivers against samples/s the training step consumes, so a user
sees whether the step will wait for data.

Sources, all over the same images and labels: a manifest of image files read per batch
(``data.cache=none``) and decoded once into memory (``cache=memory``), and the same rows as a
Hugging Face dataset (``data=hf``: images in Arrow files), uncached and cached, and as shards
(``data=shards``, streamed by litdata) with the images stored as PNG, JPEG (quality 95) and raw
8-bit pixels, all at the training size. The step is a
training step of each backbone (forward, masked losses, backward, AdamW) on one batch at the
images' size, as ``mhc-train`` runs it on a CPU. Loader and steps alternate in one process,
medians over repeats.

    python benchmarks/data_throughput.py --manifest /data/cifar10/train.csv [--rows 2048] [--image-size 32]
    python benchmarks/data_throughput.py            # 1,024 generated scenes written as PNG files
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from defaults import as_trained, default_autocast, describe
from PIL import Image
from timing import alternate

from mhc.data import HFDataModule, ManifestDataModule, ShardsDataModule
from mhc.data.generated import generate_split
from mhc.data.shards import write_shards
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet

BACKBONES = {"cnn": {"name": "cnn"}, "airbench": {"name": "airbench"}, "resnet18": {"name": "resnet18"}}


def generated_manifest(folder: Path, rows: int) -> Path:
    """``rows`` generated scenes as PNG files with their shape and colour labels."""
    images, labels = generate_split(rows, seed=0, missing_fraction=0.0)
    (folder / "img").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / "img" / f"{i}.png")
    table = pd.DataFrame({"image": [f"img/{i}.png" for i in range(rows)],
                          **{name: [str(v) for v in values] for name, values in labels.items() if name in ("shape", "tone")}})
    table.to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def as_hf_dataset(manifest: Path, folder: Path, rows: int) -> Path:
    """The manifest's first ``rows`` rows as a ``save_to_disk`` dataset with an ``Image`` column."""
    import datasets

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(rows)
    table = table[[c for c in table.columns if not c.endswith("__allowed")]]  # as the manifest source leaves them out
    table["image"] = [str(manifest.parent / p) for p in table["image"]]
    data = datasets.Dataset.from_pandas(table, preserve_index=False).cast_column("image", datasets.Image())
    for column in [c for c in table.columns if c != "image"]:  # every label a ClassLabel task, as the manifest's
        data = data.class_encode_column(column)
    datasets.DatasetDict({"train": data}).save_to_disk(str(folder / "hf"))
    return folder / "hf"


def sources(manifest: Path, hf: Path, rows: int, size: list[int], batch: int) -> dict[str, object]:
    head = manifest.with_name(".throughput_rows.csv")
    pd.read_csv(manifest, dtype=str, keep_default_na=False).head(rows).to_csv(head, index=False)
    options = {"image_size": size, "batch_size": batch, "num_workers": 0}
    built = {}
    for cache in ("none", "memory"):
        built[f"manifest, cache={cache}"] = ManifestDataModule(str(head), cache=cache, ignore_columns=ignored(head), **options)
        built[f"hf (Arrow), cache={cache}"] = HFDataModule(str(hf), val_split=None, test_split=None, cache=cache, **options)
    for image_format in ("png", "jpeg", "raw"):
        folder = hf.parent / f"shards_{image_format}"
        write_shards(ManifestDataModule(str(head), cache="none", ignore_columns=ignored(head), **options), folder,
                     splits=["train"], image_format=image_format)
        built[f"shards (litdata), {image_format}"] = ShardsDataModule(str(folder), val_split=None, test_split=None, **options)
    return built


def ignored(manifest: Path) -> list[str]:
    return [c for c in pd.read_csv(manifest, nrows=0).columns if c.endswith("__allowed")]


def batches(data: object) -> Iterator[dict]:
    """The training loader's batches, epoch after epoch (each one read again, as training reads them)."""
    data.set_tasks(data.task_specs())
    data.setup("fit")
    while True:
        yield from data.train_dataloader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="a training manifest of image files (default: generated scenes)")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 for a given manifest, 64 for scenes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3, help="batches per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", default="cnn,airbench,resnet18")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = args.manifest or generated_manifest(folder, args.rows)
        size = [args.image_size or (32 if args.manifest else 64)] * 2
        hf = as_hf_dataset(manifest, folder, args.rows)
        built = sources(manifest, hf, args.rows, size, args.batch)
        loaders = {name: batches(data) for name, data in built.items()}
        example = next(next(iter(loaders.values())))
        tasks = next(iter(built.values())).tasks
        steps: dict[str, Callable[[], None]] = {}
        for name in args.backbones.split(","):
            net = as_trained(MultiHeadNet(BACKBONES[name], tasks).train())
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

            def step(net: MultiHeadNet = net, optimizer: torch.optim.Optimizer = optimizer, backbone: str = name) -> None:
                for _ in range(args.batches):
                    with default_autocast(backbone):
                        loss = sum(batch_losses(net.tasks, net.hierarchy, net(example["image"]), example).values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

            steps[f"step: {name}"] = step
        for name, loader in loaders.items():
            def load(loader: Iterator[dict] = loader) -> None:
                for _ in range(args.batches):
                    next(loader)

            steps[f"load: {name}"] = load
        seconds = dict(zip(steps, alternate(list(steps.values()), args.repeats, warmup=1)))
    samples = args.batches * args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rows} images at {size[0]}x{size[1]}, "
          f"batch {args.batch}, num_workers 0, {describe()}")
    print("| what | samples/s |")
    print("|---|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {samples / value:.0f} |")


if __name__ == "__main__":
    main()
