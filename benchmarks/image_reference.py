"""The hand-written loop an image recipe must reach: plain PyTorch, no mhc, on any image manifest.

What a careful user writes in an afternoon: the images decoded once into a uint8 tensor at the
training images' size, a ResNet-9-style network (Page's DAWNBench CIFAR-10 network at a quarter of
its widths, [16, 32, 64, 128]) with one linear head per task, pad-and-crop (an eighth of the side)
and horizontal flips as tensor ops on each batch, AdamW under a one-cycle schedule (max lr 3e-3),
label smoothing 0.1, batch 64, 20 epochs (12 above 10,000 images), the last weights tested.

Reads ``train.csv`` and ``test.csv`` (an ``image`` column relative to the file, one column per
task; a ``|`` in a training cell makes the task multilabel; empty cells are missing labels;
``__allowed`` columns are ignored). Prints per-head test accuracy and macro-F1, and seconds.

    python benchmarks/image_reference.py --data /data/faces
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from torch import nn


def read_split(data: Path, split: str, size: tuple[int, int] | None = None,
               tasks: dict[str, list[str]] | None = None, multilabel: set[str] | None = None):
    """uint8 images [N, 3, H, W], per-task targets (class index, -1 missing; multilabel: 0/1 rows,
    -1 missing), the tasks' classes and which tasks are multilabel."""
    table = pd.read_csv(data / f"{split}.csv", keep_default_na=False, dtype=str)
    columns = [c for c in table.columns if c != "image" and not c.endswith("__allowed")]
    if multilabel is None:
        multilabel = {c for c in columns if table[c].str.contains("|", regex=False).any()}
    if tasks is None:
        tasks = {c: sorted({n for cell in table[c] for n in (cell.split("|") if c in multilabel else [cell]) if n})
                 for c in columns}
    if size is None:  # the first training image's
        with Image.open(data / table["image"].iloc[0]) as first:
            size = (first.height, first.width)
    images = np.stack([np.asarray(Image.open(data / p).convert("RGB").resize(size[::-1])) for p in table["image"]])
    targets = {}
    for task, classes in tasks.items():
        index = {c: i for i, c in enumerate(classes)}
        if task in multilabel:
            rows = np.full((len(table), len(classes)), -1, dtype=np.int64)
            for row, cell in enumerate(table[task]):
                if cell:
                    rows[row] = 0
                    rows[row, [index[n] for n in cell.split("|") if n and n not in ("-", "none")]] = 1
            targets[task] = torch.from_numpy(rows)
        else:
            targets[task] = torch.tensor([index[cell] if cell else -1 for cell in table[task]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets, tasks, multilabel, size


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, outputs: dict[str, int], widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        a, b, c, d = widths
        self.body = nn.Sequential(conv_bn(3, a), conv_bn(a, b, pool=True), Residual(b), conv_bn(b, c, pool=True),
                                  conv_bn(c, d, pool=True), Residual(d), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({task: nn.Linear(d, n) for task, n in outputs.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {task: head(features) for task, head in self.heads.items()}


def augment(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad-and-crop at one random offset per sample, and a horizontal flip of half the samples."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 3, h, w + 2 * padding)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 3, h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n) < 0.5
    cropped[flip] = cropped[flip].flip(3)
    return cropped


def losses(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], multilabel: set[str]) -> torch.Tensor:
    total = torch.zeros(())
    for task, out in logits.items():
        y = targets[task]
        if task in multilabel:
            present = (y >= 0).all(1)
            if present.any():
                total = total + F.binary_cross_entropy_with_logits(out[present], y[present].float())
        else:
            present = y >= 0
            if present.any():
                total = total + F.cross_entropy(out[present], y[present], label_smoothing=0.1)
    return total


def run(data: Path, seed: int = 0) -> dict:
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_x, train_y, tasks, multilabel, size = read_split(data, "train")
    test_x, test_y, *_ = read_split(data, "test", size, tasks, multilabel)
    mean = train_x.float().mean((0, 2, 3), keepdim=True) / 255
    std = train_x.float().std((0, 2, 3), keepdim=True) / 255
    model = ResNet9({task: len(classes) for task, classes in tasks.items()})
    batch, epochs = 64, 20 if len(train_x) <= 10_000 else 12
    steps = math.ceil(len(train_x) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * steps)
    padding = max(1, size[0] // 8)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(steps):
            index = order[i * batch:(i + 1) * batch]
            x = (augment(train_x[index].float() / 255, padding) - mean) / std
            loss = losses(model(x), {t: y[index] for t, y in train_y.items()}, multilabel)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {task: [] for task in tasks}
    with torch.no_grad():
        for i in range(0, len(test_x), 256):
            for task, out in model((test_x[i:i + 256].float() / 255 - mean) / std).items():
                outputs[task].append(out)
    heads = {}
    for task in tasks:
        out, y = torch.cat(outputs[task]), test_y[task]
        if task in multilabel:
            present = (y >= 0).all(1)
            predicted, truth = (out[present] >= 0).long().numpy(), y[present].numpy()
        else:
            present = y >= 0
            predicted, truth = out[present].argmax(1).numpy(), y[present].numpy()
        heads[task] = {"acc": round(float(accuracy_score(truth, predicted)), 4),
                       "f1": round(float(f1_score(truth, predicted, average="macro", zero_division=0)), 4)}
    return {"heads": heads, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with train.csv and test.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.seed), indent=2))


if __name__ == "__main__":
    main()
