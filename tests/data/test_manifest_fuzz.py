"""Fuzzing the manifest reader: any file either loads or fails with one :class:`MhcError` line.

Hypothesis writes manifest text (random headers, quoted and unquoted cells, empty cells,
unicode, separators and line breaks inside cells, rows of the wrong length, numeric and
non-numeric labels, duplicate columns, a BOM, very long lines, arbitrary bytes) next to a few
small image files; the manifest data module builds the training and val splits from it and
reads every sample, as training would. Any exception other than an ``MhcError`` fails.
Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mhc.data import ManifestDataModule
from mhc.errors import MhcError

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
LONG_CELL = "w" * 140_000  # longer than the csv module's default field limit (131072 characters)
GOOD_TRAIN = """\
image,shape,flag,tags,shape__allowed
img/0.png,a,yes,x|y,a|b
img/1.png,b,no,-,
img/2.png,c,yes,z,
img/3.png,,,,c|a
"""
VAL_HEADER = ["image", "shape", "flag", "tags", "shape__allowed"]

# Column names a task may have, and anything else.
TASK_NAMES = ["shape", "flag", "tags", "shape__allowed", "tags__allowed", "count", "1", "a-b", "x_y"]
ANY_NAME = st.one_of(
    st.sampled_from(["image", "text", "", " image ", "__allowed", "keys", "train", "a.b", "Ünï", "-", "[/x]", "a\nb"]),
    st.text(max_size=8),
)
ANY_CELL = st.one_of(
    st.sampled_from([
        "img/missing.png", "img", "img/garbage.png", "/nonexistent/abs.png", "", " ", "|", "none|x", "a||b", "YES",
        "true", "1.0", "0.0", "1.5", "10", "nan", "NA", "inf", "-1", "1e400", "[/b]", "[bold]", "comma, inside",
        'quote " inside', "\x00", LONG_CELL,
    ]),
    st.sampled_from(["line\nbreak", "x\r\ny", "\r", "a\u2028b", "a\x85b", "\x0c"]),  # line breaks in a cell
    st.text(max_size=12),
)
# Cells that fit their column; the val columns hold the good training manifest's vocabulary.
LABEL_CELL = st.sampled_from(["a", "b", "c", "x|y", "z", "-", "none", "0", "1", "yes", "no", "2", "10", ""])
GOOD_CELLS = {
    "image": st.sampled_from(["img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/grey16.png"]),
    "text": st.text(min_size=1, max_size=20),
    "shape": st.sampled_from(["a", "b", "c", ""]),
    "flag": st.sampled_from(["yes", "no", ""]),
    "tags": st.sampled_from(["x", "y|z", "x|y|z", "-", "none", ""]),
    "shape__allowed": st.sampled_from(["a|b|c", "a|b", "b|c", ""]),
}
# data.tasks declarations for a column (a few of them wrong), and for a column that may be missing.
OPTIONS = st.sampled_from([
    {"masked": True}, {"kind": "multilabel"}, {"kind": "binary"}, {"kind": "multiclass"},
    {"classes": ["a", "b", "c", "x", "y", "z", "0", "1", "2", "10", "yes", "no"]}, {"loss": "focal"},
    {"parent": "shape"}, {"weight": "x"}, {"classes": "xyz"}, {"hidden": [4]},
])
DECLARED = st.one_of(st.none(), st.dictionaries(st.sampled_from(["shape", "weather"]), OPTIONS, max_size=1))


def quoted(cell: str, quote: bool) -> str:
    return '"' + cell.replace('"', '""') + '"' if quote else cell


@st.composite
def manifest_texts(draw: st.DrawFn, header: list[str], noisy: bool = False, ragged: bool = False) -> str:
    """Manifest text with ``header``: two to six rows of cells that fit their column, the first
    two different (``noisy``: any cell now and then), quoted or not, a line ending, maybe a BOM
    (``ragged``: a row may be one cell longer or shorter than the header)."""
    size = draw(st.integers(2, 6))
    columns = []
    for name in header:
        cell = GOOD_CELLS.get(name.strip(), LABEL_CELL)
        cell = st.one_of(cell, ANY_CELL) if noisy else cell
        columns.append(draw(st.lists(cell, min_size=2, max_size=2, unique=True))
                       + draw(st.lists(cell, min_size=size - 2, max_size=size - 2)))
    lines = [",".join(quoted(name, draw(st.booleans())) for name in header)]
    for row in zip(*columns):
        cells = draw(st.sampled_from([row, row[:-1], (*row, "extra")])) if ragged else row
        lines.append(",".join(quoted(cell, draw(st.booleans())) for cell in cells))
    line = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    end = draw(st.sampled_from(["", line, line + line]))
    return bom + line.join(lines) + end


@st.composite
def task_headers(draw: st.DrawFn) -> list[str]:
    """An input column among one to four distinct task-like columns."""
    header = draw(st.lists(st.sampled_from(TASK_NAMES), min_size=1, max_size=4, unique=True))
    header.insert(draw(st.integers(0, len(header))), draw(st.sampled_from(["image", "text"])))
    return header


@st.composite
def anything_goes(draw: st.DrawFn) -> str:
    """Any header (duplicates, empty or odd names, input columns or not), noisy cells, ragged rows."""
    header = draw(st.lists(st.one_of(st.sampled_from(TASK_NAMES), ANY_NAME), min_size=1, max_size=5))
    return draw(manifest_texts(header, noisy=draw(st.booleans()), ragged=draw(st.booleans())))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small RGB images, a 16-bit one and a file that is no image, under ``img/``."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (5 + i, 4), (50 * i, 10, 200)).save(root / "img" / f"{i}.png")
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(root / "img" / "grey16.png")
    (root / "img" / "garbage.png").write_bytes(b"\x89PNG not really")
    return root


def load_training_data(train: Path, val: Path | None = None, tasks: dict[str, Any] | None = None) -> None:
    """Build the splits as ``mhc-train`` does and read every sample."""
    dm = ManifestDataModule(train, val=val, tasks=tasks, image_size=[4, 4], max_length=8, batch_size=4)
    dm.set_tasks(dm.task_specs())
    dm.setup("fit")
    dm.processor()
    for dataset in dm.splits.values():
        for index in range(len(dataset)):
            dataset[index]


def loads_or_fails_in_one_line(train: Path, val: Path | None = None, tasks: dict[str, Any] | None = None) -> None:
    try:
        load_training_data(train, val, tasks)
    except MhcError as err:
        message = str(err)
        assert message and "\n" not in message and len(message.splitlines()) == 1, repr(message)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")  # line endings as drawn
    return path


@FUZZ
@given(data=st.data())
def test_well_formed_training_manifest_loads_or_fails_in_one_line(folder: Path, data: st.DataObject) -> None:
    header = data.draw(task_headers())
    tasks = [name for name in header if name in TASK_NAMES and not name.endswith("__allowed")] or ["weather"]
    declared = data.draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(tasks), OPTIONS, max_size=2)))
    text = data.draw(manifest_texts(header))
    loads_or_fails_in_one_line(write_text(folder / "train.csv", text), tasks=declared)


@FUZZ
@given(text=anything_goes(), declared=DECLARED)
def test_any_training_manifest_loads_or_fails_in_one_line(folder: Path, text: str, declared) -> None:
    loads_or_fails_in_one_line(write_text(folder / "train.csv", text), tasks=declared)


@FUZZ
@given(data=st.data())
def test_any_val_manifest_loads_or_fails_in_one_line(folder: Path, data: st.DataObject) -> None:
    """A good training manifest fixes the tasks; the val rows are random (labels, allowed sets)."""
    noisy, ragged = data.draw(st.booleans()), data.draw(st.booleans())
    text = data.draw(manifest_texts(VAL_HEADER, noisy=noisy, ragged=ragged and noisy))
    train = write_text(folder / "good_train.csv", GOOD_TRAIN)
    loads_or_fails_in_one_line(train, write_text(folder / "val.csv", text))


@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_a_row_of_the_wrong_length_never_loads(folder: Path, data: st.DataObject) -> None:
    """A row with a cell more or less than the header would shift or drop cells: it is an error
    naming the row, wherever it is and whatever the cells hold."""
    header = ["image", *data.draw(st.lists(st.sampled_from(["shape", "flag", "tags"]), min_size=1, max_size=3, unique=True))]
    rows = [[data.draw(GOOD_CELLS.get(name, LABEL_CELL)) for name in header] for _ in range(data.draw(st.integers(1, 5)))]
    bad = data.draw(st.integers(0, len(rows) - 1))
    rows[bad] = rows[bad][:-1] if data.draw(st.booleans()) else [*rows[bad], data.draw(LABEL_CELL)]
    text = "\n".join(",".join(quoted(cell, True) for cell in row) for row in [header, *rows]) + "\n"
    with pytest.raises(MhcError, match=rf": row {bad + 1} \(line {bad + 2}\) has {len(rows[bad])} fields? but the header has {len(header)}; "):
        load_training_data(write_text(folder / "ragged.csv", text))


@settings(FUZZ, max_examples=100)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_bytes_load_or_fail_in_one_line(folder: Path, content: bytes) -> None:
    train = folder / "bytes.csv"
    train.write_bytes(content)
    loads_or_fails_in_one_line(train)
