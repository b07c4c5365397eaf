"""UTKFace (Zhang, Song & Qi 2017) as a 64-pixel face manifest with binary and multiclass heads.

MIRROR is a git directory holding UTKFace's "aligned & cropped" faces under any folder, named
``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` (the labels are in the names): for instance a snapshot
of github.com/mattans/AgeProgression (``data/UTKFace/unlabeled/``, 23,707 faces of 200x200).
UTKFace is released for non-commercial research only; the copyright of the photos stays with
their owners. OUT gets ``images/*.png`` (centre square, resized to ``--size``) and ``train.csv``,
``val.csv``, ``test.csv`` (a seeded 80/10/10 split: UTKFace has no official one, and no identity
labels, so one person may appear in several splits) with the columns

* ``female`` (binary: UTKFace's gender field), ``adult`` (age >= 18), ``senior`` (age >= 60);
* ``race``: white, black, asian, indian, other;
* ``age``: 0-12, 13-19, 20-29, 30-39, 40-49, 50-59, 60+.

Byte-identical files are kept once, or left out when their copies disagree on the labels.

    python benchmarks/build_faces.py MIRROR OUT
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
from typing import Iterator

from PIL import Image

NAME = re.compile(r"^(\d+)_([01])_([0-4])_\d+")
RACES = ["white", "black", "asian", "indian", "other"]
AGE_EDGES = [13, 20, 30, 40, 50, 60]
AGES = ["0-12", "13-19", "20-29", "30-39", "40-49", "50-59", "60+"]
COLUMNS = ["image", "female", "adult", "senior", "race", "age"]


def tree(mirror: str) -> Iterator[tuple[str, str]]:
    """``(path, blob id)`` of every file at the snapshot's HEAD, through one ``git ls-tree``."""
    listing = subprocess.run(["git", "--git-dir", mirror, "ls-tree", "-r", "-z", "HEAD"], check=True,
                             capture_output=True).stdout.decode()
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        kind, blob = meta.split()[1:3]
        if kind == "blob":
            yield path, blob


def labelled_files(mirror: str) -> list[tuple[str, str, tuple[int, int, int]]]:
    """(blob id, file name, (age, gender, race)) of every file whose name carries labels."""
    found = []
    for path, blob in tree(mirror):
        name = Path(path).name
        match = NAME.match(name)
        if match and ".jpg" in name.lower():
            found.append((blob, name, tuple(int(v) for v in match.groups())))
    return found


def distinct(files: list[tuple[str, str, tuple[int, int, int]]]) -> list[tuple[str, str, tuple[int, int, int]]]:
    """One file per distinct image; images whose copies disagree on the labels are left out."""
    copies: dict[str, list] = collections.defaultdict(list)
    for file in files:
        copies[file[0]].append(file)
    kept = [min(group, key=lambda f: f[1]) for group in copies.values() if len({f[2] for f in group}) == 1]
    print(f"{len(files)} labelled files, {len(copies)} distinct images, {len(copies) - len(kept)} left out "
          "(copies with different labels)")
    return sorted(kept, key=lambda f: f[1])


def blobs(mirror: str, ids: list[str]) -> Iterator[bytes]:
    """The bytes of each blob, in order, through one ``git cat-file --batch``."""
    process = subprocess.Popen(["git", "--git-dir", mirror, "cat-file", "--batch"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    for blob in ids:
        process.stdin.write(blob.encode() + b"\n")
        process.stdin.flush()
        size = int(process.stdout.readline().split()[2])
        yield process.stdout.read(size)
        process.stdout.read(1)
    process.stdin.close()
    process.wait()


def square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.convert("RGB").resize((size, size), Image.LANCZOS, box=(left, top, left + side, top + side))


def row(image: str, age: int, gender: int, race: int) -> dict[str, object]:
    return {"image": image, "female": gender, "adult": int(age >= 18), "senior": int(age >= 60), "race": RACES[race],
            "age": AGES[sum(age >= edge for edge in AGE_EDGES)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mirror")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    files = distinct(labelled_files(args.mirror))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for (_, name, labels), data in zip(files, blobs(args.mirror, [f[0] for f in files])):
        image = "images/" + re.sub(r"[^0-9A-Za-z_]", "", name.split(".")[0]) + ".png"
        square(Image.open(io.BytesIO(data)), args.size).save(args.out / image)
        rows.append(row(image, *labels))
    assert len({r["image"] for r in rows}) == len(rows), "two images map to one file name"
    random.Random(args.seed).shuffle(rows)
    tenth = len(rows) // 10
    splits = {"test": rows[:tenth], "val": rows[tenth:2 * tenth], "train": rows[2 * tenth:]}
    for split, part in splits.items():
        with open(args.out / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(part)
    print("images per split:", {split: len(part) for split, part in splits.items()})
    for column in COLUMNS[1:]:
        counts = collections.Counter(str(r[column]) for r in splits["train"])
        print(f"  {column}: " + ", ".join(f"{k} {v / len(splits['train']):.1%}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
