"""Time to accuracy on a real image manifest: ``mhc-train`` against a hand-written PyTorch loop.

Both train the same recipe, read from the composed ``mhc-train`` config (by default
``experiment=cifar10``): the same network (built from the registry with the config's backbone
options, the same linear heads), the same pad-and-crop and flip, SGD with the same learning
rate, momentum and weight decay, the same warm-up-cosine schedule, batch size, epochs, label
smoothing and masked losses, and the test split scored with the same flip TTA. The plain loop
is what a careful user writes by hand: images decoded once into a tensor, batches sliced from
it, augmentation as tensor ops, one ``cross_entropy`` per head. ``mhc-train`` runs as the
command a user types, in its own process, and its wall time counts everything from start to
exit (imports, caching, validation each epoch, checkpoints, the test).

Prints each side's wall time and per-head test accuracy and the ratio of wall times (mhc / plain)
at equal epochs. Run it on an idle machine; the two sides run one after the other.

    python benchmarks/build_cifar10.py MIRROR /data/cifar10
    python benchmarks/time_to_accuracy.py --data /data/cifar10 [--epochs 15] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from mhc.api import compose_config
from mhc.model.backbones import create_backbone


def read_split(data: Path, split: str, classes: dict[str, list[str]] | None = None):
    """uint8 images [N, 3, H, W] and per-task class indices (-1: missing) of one manifest split."""
    table = pd.read_csv(data / f"{split}.csv", keep_default_na=False, dtype=str)
    images = np.stack([np.asarray(Image.open(data / path).convert("RGB")) for path in table["image"]])
    tasks = [c for c in table.columns if c != "image" and not c.endswith("__allowed")]
    classes = classes or {t: sorted(set(table[t]) - {""}) for t in tasks}
    labels = {t: torch.tensor([classes[t].index(v) if v else -1 for v in table[t]]) for t in tasks}
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, classes


def plain_loop(cfg, data: Path, epochs: int) -> tuple[float, dict[str, float]]:
    """The hand-written loop; returns its wall time and per-head test accuracy."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train_x, train_y, classes = read_split(data, "train")
    test_x, test_y, _ = read_split(data, "test", classes)
    options = {k: v for k, v in OmegaConf.to_container(cfg.backbone).items() if k not in ("weights", "pretrained")}
    body = create_backbone(**options)
    heads = nn.ModuleDict({t: nn.Linear(body.num_features, len(c)) for t, c in classes.items()})
    net = nn.ModuleDict({"body": body, "heads": heads}).to(memory_format=torch.channels_last)
    mean = torch.tensor(list(cfg.data.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.data.std)).view(1, 3, 1, 1)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    opt = cfg.optimizer
    optimizer = torch.optim.SGD(net.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                                weight_decay=opt.weight_decay)
    batch, padding = int(cfg.data.batch_size), int(cfg.augment.padding)
    steps = epochs * math.ceil(len(train_x) / batch)
    warmup = max(1, round(cfg.scheduler.warmup_fraction * steps))
    floor = cfg.scheduler.min_lr_ratio
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else
                                                 floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup)))))
    smoothing = float(cfg.loss.label_smoothing)
    rows, cols = torch.arange(train_x.shape[-2]), torch.arange(train_x.shape[-1])
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(train_x))
        for first in range(0, len(order), batch):
            index = order[first : first + batch]
            x = F.pad(train_x[index].float(), (padding,) * 4, mode="reflect")
            dy, dx = torch.randint(0, 2 * padding + 1, (2, len(index)))
            flip = torch.rand(len(index)) < cfg.augment.hflip
            c = dx[:, None] + cols
            c = torch.where(flip[:, None], c.flip(-1), c)
            x = x[torch.arange(len(index))[:, None, None], :, (dy[:, None] + rows)[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)
            x = ((x / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            features = net["body"](x)
            loss = sum(F.cross_entropy(head(features), train_y[t][index], ignore_index=-1, label_smoothing=smoothing)
                       for t, head in net["heads"].items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    correct = {t: 0 for t in classes}
    with torch.no_grad():
        for first in range(0, len(test_x), 500):
            x = prepare(test_x[first : first + 500])
            plain, mirrored = net["body"](x), net["body"](x.flip(-1))
            for t, head in net["heads"].items():
                probs = head(plain).softmax(-1) + head(mirrored).softmax(-1)
                correct[t] += int((probs.argmax(-1) == test_y[t][first : first + 500]).sum())
    return time.perf_counter() - start, {t: n / len(test_x) for t, n in correct.items()}


def mhc_run(overrides: list[str], out: Path) -> tuple[float, dict[str, float]]:
    """``mhc-train`` in its own process; its wall time and per-head test accuracy."""
    command = ["mhc-train", *overrides, f"hydra.run.dir={out}", "logger=csv", "~callbacks.progress_bar"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    metrics = pd.read_csv(next(out.glob("csv/version_*/metrics.csv")))
    tests = metrics.filter(regex=r"^test/.*/acc$").dropna(how="all").iloc[-1]
    return seconds, {name.split("/")[1]: float(v) for name, v in tests.items() if name.split("/")[1] != "mean"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with train.csv, val.csv, test.csv")
    parser.add_argument("--experiment", default="cifar10")
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment's trainer.max_epochs")
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args()
    data = args.data.resolve()
    overrides = [f"experiment={args.experiment}", f"data.train={data}/train.csv", f"data.val={data}/val.csv",
                 f"data.test={data}/test.csv", *args.overrides]
    cfg = compose_config("train", overrides)
    epochs = args.epochs or int(cfg.trainer.max_epochs)
    overrides.append(f"trainer.max_epochs={epochs}")
    plain_seconds, plain_acc = plain_loop(cfg, data, epochs)
    print(json.dumps({"plain": {"seconds": round(plain_seconds, 1), "test_acc": plain_acc}}), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        mhc_seconds, mhc_acc = mhc_run(overrides, Path(folder) / "run")
    print(json.dumps({"epochs": epochs, "mhc": {"seconds": round(mhc_seconds, 1), "test_acc": mhc_acc},
                      "plain": {"seconds": round(plain_seconds, 1), "test_acc": plain_acc},
                      "ratio": round(mhc_seconds / plain_seconds, 3)}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
