"""The recipe matrix: every recipe, mhc's untuned default and a plain reference, on real data sets
at several training sizes, in one table.

Each data set is a manifest folder (``train.csv``, ``val.csv``, ``test.csv``; an ``image`` or a
``text`` column). For each training size a seeded sample of the training rows is written beside
the results (validation and test stay whole), and every run of that modality trains on it:

* images: ``default`` (``data=manifest`` at the images' size, 5 epochs: mhc without a recipe),
  ``cifar10``, ``faces``, ``auto`` (``experiment=...``) and ``reference``
  (``benchmarks/image_reference.py``: a hand-written ResNet-9 loop);
* texts: ``default`` (``data=manifest backbone=seq_small``), ``text``, ``auto`` and ``reference``
  (``benchmarks/tfidf_baseline.py``: TF-IDF and logistic regression, thresholds tuned on val).

``mhc-train`` runs as a user types it, in its own process, its wall time counting everything
(start-up, decoding, validation, the test). ``__allowed`` columns are left out
(``data.ignore_columns``), so that every run is scored over all classes. Each finished cell is
appended to ``--results`` (JSON lines) and skipped when the command runs again, so a long matrix
can be stopped and continued; ``--table`` prints the Markdown table of a results file
(single-label heads: test accuracy; multilabel heads: test macro-F1; a wall time measured on
another CPU than most cells' names it). Run it on an idle machine.

    python benchmarks/recipes.py --data faces=/data/faces goemotions=/data/goemotions \\
        --sizes 2000 8000 full --results recipes.jsonl
    python benchmarks/recipes.py --table recipes.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image_reference  # noqa: E402
import tfidf_baseline  # noqa: E402

RUNS = {
    "image": {"default": ["data=manifest", "trainer.max_epochs=5"], "cifar10": ["experiment=cifar10"],
              "faces": ["experiment=faces"], "auto": ["experiment=auto"]},
    "text": {"default": ["data=manifest", "backbone=seq_small"], "text": ["experiment=text"], "auto": ["experiment=auto"]},
}
METRICS = ("acc", "f1")
XEON = "Intel Xeon (AVX-512)"  # the machine of the rows that name none; a row's wall time from another is marked


def modality(folder: Path) -> str:
    header = pd.read_csv(folder / "train.csv", nrows=0).columns
    return "text" if "text" in header else "image"


def sample(folder: Path, size: int | None, out: Path, seed: int = 0) -> Path:
    """``folder``'s splits with ``size`` training rows drawn with ``seed`` (all with ``None``;
    see :func:`sample_rows`), image paths made absolute, written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        table = pd.read_csv(folder / f"{split}.csv", dtype=str, keep_default_na=False)
        if split == "train" and size is not None and size < len(table):
            table = sample_rows(table, size, seed)
        if "image" in table:
            table["image"] = [str((folder / p).resolve()) for p in table["image"]]
        table.to_csv(out / f"{split}.csv", index=False)
    return out


def sample_rows(table: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """``size`` rows of ``table`` drawn with ``seed``, one row of every class of every head among
    them (a class the sample lacked would be unknown to the model yet met in validation), the rest
    drawn uniformly: the classes' shares stay those of the data."""
    rng = np.random.default_rng(seed)
    kept: set[int] = set()
    for column in label_columns(table):
        labels = table[column].reset_index(drop=True).str.split("|").explode()  # index: the row's position
        labels = labels[labels != ""]
        for _, rows in sorted(labels.groupby(labels).groups.items()):
            if not kept.intersection(rows):
                kept.add(int(rng.choice(rows)))
    rest = np.setdiff1d(np.arange(len(table)), sorted(kept))
    drawn = rng.choice(rest, size=max(0, size - len(kept)), replace=False)
    return table.iloc[np.sort(np.concatenate([sorted(kept), drawn]).astype(int))]


def label_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ("image", "text") and not c.endswith("__allowed")]


def data_overrides(folder: Path) -> list[str]:
    """The splits, the images' own size, and the output-mask columns left out."""
    first = pd.read_csv(folder / "train.csv", nrows=1, dtype=str, keep_default_na=False)
    header = list(first.columns)
    options = [f"data.{split}={folder / split}.csv" for split in ("train", "val", "test")]
    if "image" in header:
        with Image.open(first["image"].iloc[0]) as image:
            options.append(f"data.image_size=[{image.height},{image.width}]")
    allowed = [c for c in header if c.endswith("__allowed")]
    if allowed:
        options.append(f"data.ignore_columns=[{','.join(allowed)}]")
    return options


def mhc_run(overrides: list[str], out: Path) -> dict:
    """``mhc-train`` in its own process: per-head test metrics (from its CSV log) and wall time."""
    shutil.rmtree(out, ignore_errors=True)  # an interrupted cell's run is started again
    command = ["mhc-train", *overrides, f"hydra.run.dir={out}", "logger=csv", "~callbacks.progress_bar"]
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {"heads": test_metrics(out), "seconds": round(time.perf_counter() - start, 1)}


def test_metrics(out: Path) -> dict[str, dict[str, float]]:
    """Per-head test metrics from the CSV log of the run in ``out``."""
    metrics = pd.read_csv(next(out.glob("csv/version_*/metrics.csv")))
    heads: dict[str, dict[str, float]] = {}
    for name in metrics.columns:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "test" and parts[1] != "mean" and parts[2] in METRICS:
            values = metrics[name].dropna()
            if len(values):
                heads.setdefault(parts[1], {})[parts[2]] = round(float(values.iloc[-1]), 4)
    return heads


def run_cell(kind: str, run: str, folder: Path, work: Path) -> dict:
    if run == "reference":
        return image_reference.run(folder) if kind == "image" else tfidf_baseline.run(folder)
    return mhc_run([*RUNS[kind][run], *data_overrides(folder)], work)


def done(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []


def headline(task: str, values: dict[str, float], multilabel: set[str]) -> str:
    metric = "f1" if task in multilabel else "acc"
    return f"{values[metric]:.3f}" if metric in values else "-"


def table(rows: list[dict]) -> str:
    """One Markdown table per data set: a row per size and run, a column per head, and wall time."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        order = ["default", "cifar10", "faces", "text", "auto", "reference"]
        cells = sorted((r for r in rows if r["data"] == data), key=lambda r: (r["size"], order.index(r["run"])))
        heads = list(dict.fromkeys(t for r in cells for t in r["heads"]))
        multilabel = set(cells[0].get("multilabel", []))
        names = [f"{t} ({'F1' if t in multilabel else 'acc'})" for t in heads]
        lines += [f"**{data}**", "", "| train size | run | " + " | ".join(names) + " | wall time |",
                  "|---|---|" + "---:|" * (len(heads) + 1)]
        for r in cells:
            values = [headline(t, r["heads"].get(t, {}), multilabel) for t in heads]
            where = f" ({r['machine']})" if r.get("machine", XEON) != XEON else ""
            lines.append(f"| {r['size']:,} | {r['run']} | " + " | ".join(values) + f" | {r['seconds']:.0f} s{where} |")
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    """The CPU model the cell ran on (wall times compare only on one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def multilabel_tasks(folder: Path) -> list[str]:
    table_ = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)
    return [c for c in label_columns(table_) if table_[c].str.contains("|", regex=False).any()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="*", default=[], help="NAME=FOLDER manifest folders")
    parser.add_argument("--sizes", nargs="*", default=["full"], help="training sizes, or full")
    parser.add_argument("--runs", nargs="*", default=None, help="default: every run of the data's modality")
    parser.add_argument("--results", type=Path, default=Path("recipes.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("outputs/recipes"))
    parser.add_argument("--table", type=Path, default=None, help="print the table of this results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(done(args.table)))
        return
    for spec in args.data:
        name, folder = spec.split("=", 1)
        folder, kind = Path(folder).resolve(), modality(Path(folder))
        for size_text in args.sizes:
            size = None if size_text == "full" else int(size_text)
            subset = sample(folder, size, args.work / f"{name}-{size_text}" / "data")
            count = len(pd.read_csv(subset / "train.csv", usecols=[0]))
            for run in args.runs or [*RUNS[kind], "reference"]:
                if run != "reference" and run not in RUNS[kind]:
                    continue
                if any(r["data"] == name and r["size"] == count and r["run"] == run for r in done(args.results)):
                    continue
                result = run_cell(kind, run, subset, args.work / f"{name}-{size_text}" / run)
                row = {"data": name, "size": count, "run": run, "multilabel": multilabel_tasks(subset), **result,
                       "machine": machine()}
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table(done(args.results)))


if __name__ == "__main__":
    main()
