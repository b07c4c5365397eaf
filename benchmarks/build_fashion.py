"""Fashion Product Images (Small) (Aggarwal 2019, Kaggle) as a 64-pixel product manifest with seven heads.

IMAGES is a git directory holding the small set's product photos as ``ID.jpg`` under any folder
(60x80 pixels, on white): for instance a snapshot of
github.com/tanmay0401/multimodal-recommendation-engine (``data/images/``, 44,072 photos saved
from the Hugging Face copy ``ashraq/fashion-product-images-small``). STYLES is a git directory
whose ``styles.csv`` holds the set's labels (``id,gender,masterCategory,subCategory,
articleType,baseColour,season,year,usage``): for instance a snapshot of
github.com/animmala3942/FashionProductRecommendationSystem. The photos are Myntra's catalogue
(Kaggle licence: MIT). OUT gets ``images/*.png`` (padded with white to a square, resized to
``--size``) and ``train.csv``, ``val.csv``, ``test.csv`` (a seeded 80/10/10 split: the set has no
official one) with the columns

* ``gender``: Men, Women, Unisex, Boys, Girls;
* ``masterCategory``, ``subCategory``, ``articleType``: the catalogue's three levels;
* ``baseColour``, ``season``, ``usage``.

Classes with fewer than ``--min-count`` training photos are left empty (missing) in every split,
as are the labels on which byte-identical photos disagree (such photos are kept once).

    python benchmarks/build_fashion.py IMAGES STYLES OUT
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import random
import re
import subprocess
from pathlib import Path

from build_faces import blobs, tree
from PIL import Image

NAME = re.compile(r"(?:^|/)(\d+)\.jpg$")
TASKS = ["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"]


def photos(mirror: str) -> dict[str, list[str]]:
    """blob id -> the product ids of the files holding it."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for path, blob in tree(mirror):
        if match := NAME.search(path):
            found[blob].append(match.group(1))
    return found


def styles(mirror: str) -> dict[str, dict[str, str]]:
    text = subprocess.run(["git", "--git-dir", mirror, "show", "HEAD:styles.csv"], check=True,
                          capture_output=True).stdout.decode("utf-8")
    return {row["id"]: row for row in csv.DictReader(io.StringIO(text))}


def agreed(labels: list[dict[str, str]]) -> dict[str, str]:
    """Each task's label where every copy of a photo has the same one, else empty."""
    return {task: labels[0][task] if len({copy[task] for copy in labels}) == 1 else "" for task in TASKS}


def square(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas if side <= size else canvas.resize((size, size), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images")
    parser.add_argument("styles")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--min-count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels = styles(args.styles)
    found = {blob: sorted(ids, key=int) for blob, ids in photos(args.images).items()}
    kept = sorted((ids[0], blob) for blob, ids in found.items() if all(i in labels for i in ids))
    print(f"{sum(map(len, found.values()))} photos, {len(found)} distinct, {len(kept)} with labels")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for (first, blob), data in zip(kept, blobs(args.images, [blob for _, blob in kept])):
        image = f"images/{first}.png"
        square(Image.open(io.BytesIO(data)), args.size).save(args.out / image)
        rows.append({"image": image, **agreed([labels[i] for i in found[blob]])})
    random.Random(args.seed).shuffle(rows)
    tenth = len(rows) // 10
    splits = {"test": rows[:tenth], "val": rows[tenth:2 * tenth], "train": rows[2 * tenth:]}
    for task in TASKS:
        counts = collections.Counter(r[task] for r in splits["train"])
        for row in rows:
            row[task] = row[task] if counts[row[task]] >= args.min_count else ""
    for split, part in splits.items():
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["image", *TASKS])
            writer.writeheader()
            writer.writerows(part)
    print("images per split:", {split: len(part) for split, part in splits.items()})
    for task in TASKS:
        counts = collections.Counter(r[task] for r in splits["train"])
        print(f"  {task}: {len(counts) - ('' in counts)} classes, {len(splits['train']) - counts['']} labelled")


if __name__ == "__main__":
    main()
