"""A built-in, generated multi-attribute image data set ("scenes"), cached on disk.

Each 64x64 RGB scene shows one object on a textured grey background, with up to four dark
marks in the corners. Seven tasks cover every head type:

=========  ==========  ======  =======================================================
task       kind        masked  classes
=========  ==========  ======  =======================================================
shape      multiclass  no      circle, square, triangle, diamond
size       multiclass  no      small, medium, large
position   multiclass  yes     top-left, top-right, bottom-left, bottom-right
tone       multiclass  yes     warm, cool (coarse)
color      multiclass  yes     red, orange, yellow | green, blue, purple (fine, under tone)
outlined   binary      yes     filled, outlined
marks      multilabel  yes     dot, bar, ring, cross
=========  ==========  ======  =======================================================

Masked tasks lose each label with probability ``missing_fraction``. Generation is
deterministic in ``seed`` and vectorised (about a second per thousand images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from mhc.errors import first_line
from mhc.tasks import TaskSpec

log = logging.getLogger(__name__)

SHAPES = ["circle", "square", "triangle", "diamond"]
SIZES = ["small", "medium", "large"]
POSITIONS = ["top-left", "top-right", "bottom-left", "bottom-right"]
TONES = ["warm", "cool"]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple"]
COLORS_BY_TONE = {"warm": ["red", "orange", "yellow"], "cool": ["green", "blue", "purple"]}
MARKS = ["dot", "bar", "ring", "cross"]
RGB = np.array([[220, 40, 40], [245, 140, 20], [230, 220, 40], [40, 180, 60], [40, 80, 225], [150, 50, 205]], np.float32)
RADII = {0: (6.5, 8.0), 1: (10.5, 12.0), 2: (14.5, 16.0)}
IMAGE_SIZE = 64
VERSION = 1


def scene_tasks() -> list[TaskSpec]:
    """The tasks of the generated scenes, in the order of the table above."""
    return [
        TaskSpec("shape", "multiclass", SHAPES),
        TaskSpec("size", "multiclass", SIZES),
        TaskSpec("position", "multiclass", POSITIONS, masked=True,  # a horizontal flip swaps left and right
                 hflip={"top-left": "top-right", "bottom-left": "bottom-right"}),
        TaskSpec("tone", "multiclass", TONES, masked=True),
        TaskSpec("color", "multiclass", COLORS, masked=True, parent="tone", allowed_by_parent=COLORS_BY_TONE),
        TaskSpec("outlined", "binary", ["filled", "outlined"], masked=True),
        TaskSpec("marks", "multilabel", MARKS, masked=True),
    ]


def _inside(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Bool [n, H, W]: pixels inside each object (dx, dy: offsets from its centre)."""
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    # Apex at -r, base at +0.8 r with half-width r.
    triangle = (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 1.8)
    diamond = np.abs(dx) + np.abs(dy) <= 1.1 * r
    return np.select([shape == 0, shape == 1, shape == 2], [circle, square, triangle], diamond)


def _mark(kind: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    if kind == 0:  # dot
        return dx**2 + dy**2 <= 2.6**2
    if kind == 1:  # bar
        return (np.abs(dx) <= 3.5) & (np.abs(dy) <= 1.0)
    if kind == 2:  # ring
        d2 = dx**2 + dy**2
        return (d2 <= 3.6**2) & (d2 >= 2.0**2)
    return (np.abs(np.abs(dx) - np.abs(dy)) <= 0.8) & (np.abs(dx) <= 3.5)  # cross


def render_scenes(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images uint8 [n, 64, 64, 3] and complete labels (no missing values) per task."""
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, 4, n)
    size = rng.integers(0, 3, n)
    position = rng.integers(0, 4, n)
    color = rng.integers(0, 6, n)
    tone = (color >= 3).astype(np.int64)
    outlined = rng.integers(0, 2, n)
    marks = (rng.random((n, 4)) < 0.5).astype(np.int64)

    lo = np.array([RADII[s][0] for s in range(3)])[size]
    hi = np.array([RADII[s][1] for s in range(3)])[size]
    r = rng.uniform(lo, hi)[:, None, None]
    cx = np.where(position % 2 == 0, 24.0, 40.0) + rng.uniform(-2, 2, n)
    cy = np.where(position < 2, 24.0, 40.0) + rng.uniform(-2, 2, n)

    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    s = shape[:, None, None]
    body = _inside(s, dx, dy, r)
    hollow = body & ~_inside(s, dx, dy, r - 3.0)
    object_mask = np.where(outlined[:, None, None] == 1, hollow, body)

    # Textured background: grey level, oriented stripes and pixel noise.
    base = rng.uniform(70, 150, n)[:, None, None]
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    freq = rng.uniform(0.15, 0.5, n)[:, None, None]
    stripes = 14 * np.sin(freq * (xx[None] * np.cos(theta) + yy[None] * np.sin(theta)))
    grey = base + stripes + rng.normal(0, 6, (n, IMAGE_SIZE, IMAGE_SIZE))
    image = np.repeat(grey[..., None], 3, axis=-1)

    tint = RGB[color] + rng.uniform(-15, 15, (n, 3))
    image = np.where(object_mask[..., None], tint[:, None, None, :], image)

    corners = [(5.0, 5.0), (58.0, 5.0), (5.0, 58.0), (58.0, 58.0)]  # one fixed corner per mark kind
    for kind, (mx, my) in enumerate(corners):
        jx, jy = rng.uniform(-1, 1, (2, n))
        glyph = _mark(kind, xx[None] - (mx + jx)[:, None, None], yy[None] - (my + jy)[:, None, None])
        draw = glyph & (marks[:, kind] == 1)[:, None, None]
        image = np.where(draw[..., None], 15.0, image)

    images = np.clip(image, 0, 255).astype(np.uint8)
    labels = {
        "shape": shape,
        "size": size,
        "position": position,
        "tone": tone,
        "color": color,
        "outlined": outlined,
        "marks": marks,
    }
    return images, labels


def drop_labels(labels: dict[str, np.ndarray], tasks: list[TaskSpec], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Mark a random ``fraction`` of each masked task's labels missing (-1), deterministically."""
    rng = np.random.default_rng(seed + 7919)
    out = {}
    for task in tasks:
        values = labels[task.name].copy()
        if task.masked and fraction > 0:
            missing = rng.random(len(values)) < fraction
            values[missing] = -1
        out[task.name] = values
    return out


def generate_split(n: int, seed: int, missing_fraction: float, chunk: int = 1000) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One split: rendered in chunks (bounded memory), then labels dropped."""
    parts = [render_scenes(min(chunk, n - start), seed * 1_000_003 + start) for start in range(0, n, chunk)]
    images = np.concatenate([p[0] for p in parts])
    labels = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return images, drop_labels(labels, scene_tasks(), missing_fraction, seed)


def read_cached(path: Path, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """A cached split, or ``None`` (with a warning) when the file is damaged: truncated, not an
    ``.npz``, or without the images and labels of ``n`` samples; it is then generated again."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            images = cached["images"]
            labels = {k[len("label_"):]: cached[k] for k in cached.files if k.startswith("label_")}
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (BadZipFile, EOFError, KeyError, ...)
        log.warning(f"the cached data {path} is damaged ({type(err).__name__}: {first_line(err)}); generating it again")
        return None
    names = {t.name for t in scene_tasks()}
    if images.shape[:1] != (n,) or set(labels) != names or any(len(v) != n for v in labels.values()):
        log.warning(f"the cached data {path} does not hold the {n} samples it should; generating it again")
        return None
    return images, labels


def load_or_generate(
    cache_dir: str | os.PathLike, split: str, n: int, seed: int, missing_fraction: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A split from the on-disk cache, generating and caching it (atomically) on first use."""
    key = json.dumps({"v": VERSION, "split": split, "n": n, "seed": seed, "missing": missing_fraction}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"scenes-{split}-{digest}.npz"
    if path.is_file():
        cached = read_cached(path, n)
        if cached is not None:
            return cached
    split_seed = seed + {"train": 0, "val": 1, "test": 2}.get(split, 3) * 100_000
    images, labels = generate_split(n, split_seed, missing_fraction)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, images=images, **{f"label_{k}": v for k, v in labels.items()})
    os.replace(tmp, path)
    return images, labels
