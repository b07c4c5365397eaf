"""A catalogue of bad training inputs and the one-line error each gets.

Every case writes a small manifest folder, builds the manifest data module the way
``mhc-train`` does (tasks inferred from the training manifest, config overrides applied,
``setup("fit")``, every batch of the train and val loaders, so images are read), and asserts
the whole message: the file, the row and column or the task, and what was expected.
Inputs that are accepted rather than rejected (other image modes and sizes) are shown to load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from mhc.data import ManifestDataModule
from mhc.errors import ConfigError, DataError, MhcError
from mhc.tasks import resolve_tasks
from tests.data.test_manifest import write

TRAIN = """\
    image,shape,flag,tags,shape__allowed
    img/0.png,circle,yes,x|y,circle|square
    img/1.png,square,no,-,
    img/2.png,triangle,yes,z,
    img/3.png,circle,no,x,
"""
AS_TRAIN = "<the training manifest>"
HEADER = "image,shape,flag,tags"
SHAPES = r"\['circle', 'square', 'triangle'\]"
TASKS = r"\['shape', 'flag', 'tags'\]"


def truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


def float_tiff(path: Path) -> None:
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)


IMAGE_MAKERS: dict[str, Callable[[Path], None]] = {
    "truncated.png": truncated_png,
    "text.png": lambda path: path.write_text("not an image"),
    "empty.png": lambda path: path.write_bytes(b""),
    "float.tiff": float_tiff,
}


@dataclass
class BadInput:
    """One catalogue entry: the files that differ from the good ones, and the expected message.

    ``pattern`` is a regular expression for the whole message; ``<dir>`` stands for the
    manifest folder. A manifest text of ``None`` means the file does not exist; the val
    manifest is the training one unless given.
    """

    pattern: str
    train: str | None = TRAIN
    val: str | None = AS_TRAIN
    error: type[MhcError] = DataError
    tasks: dict[str, Any] | None = None  # data.tasks declarations
    overrides: dict[str, Any] | None = None  # tasks.<name> options from the config
    options: dict[str, Any] = field(default_factory=dict)  # other data.* options
    encoding: str = "utf-8"  # of the manifest files


CATALOGUE: dict[str, BadInput] = {
    # files and images
    "missing training manifest": BadInput(r"<dir>/train\.csv: manifest file not found", train=None),
    "missing val manifest": BadInput(r"<dir>/val\.csv: manifest file not found", val=None),
    "missing image file": BadInput(
        r"<dir>/train\.csv: row 2, column 'image': image file '<dir>/img/9\.png' not found",
        train="image,flag\nimg/0.png,no\nimg/9.png,yes\n",
    ),
    "several missing image files": BadInput(
        r"<dir>/val\.csv: row 1, column 'image': image file '<dir>/img/7\.png' not found \(and 2 more rows\)",
        val=f"{HEADER}\nimg/7.png,circle,yes,x\nimg/8.png,circle,yes,x\nimg/9.png,circle,yes,x\n",
    ),
    "image path is a folder": BadInput(
        r"<dir>/train\.csv: row 1, column 'image': '<dir>/img' is a folder, not an image file",
        train="image,flag\nimg,no\nimg/1.png,yes\n",
    ),
    "empty image cell": BadInput(
        r"<dir>/train\.csv: row 2, column 'image': no image path", train="image,flag\nimg/0.png,no\n,yes\n"
    ),
    "truncated image": BadInput(
        r"<dir>/train\.csv: row 2, column 'image': image '<dir>/img/truncated\.png' could not be read "
        r"\(image file is truncated\)",
        train="image,flag\nimg/0.png,no\nimg/truncated.png,yes\n",
    ),
    "not an image": BadInput(
        r"<dir>/val\.csv: row 2, column 'image': image '<dir>/img/text\.png' could not be read "
        r"\(cannot identify image file '<dir>/img/text\.png'\)",
        val=f"{HEADER}\nimg/0.png,circle,yes,x\nimg/text.png,circle,yes,x\n",
    ),
    "empty image file": BadInput(
        r"<dir>/val\.csv: row 1, column 'image': image '<dir>/img/empty\.png' could not be read "
        r"\(cannot identify image file '<dir>/img/empty\.png'\)",
        val=f"{HEADER}\nimg/empty.png,circle,yes,x\n",
    ),
    "float image": BadInput(
        r"<dir>/val\.csv: row 1, column 'image': image '<dir>/img/float\.tiff' has 32-bit float pixels "
        r"\(mode 'F'\); expected 8- or 16-bit images",
        val=f"{HEADER}\nimg/float.tiff,circle,yes,x\n",
    ),
    # labels
    "label outside the vocabulary": BadInput(
        rf"<dir>/val\.csv: row 2, column 'shape': unknown class 'hexagon' for task 'shape'; expected one of {SHAPES}",
        val=f"{HEADER}\nimg/0.png,circle,yes,x\nimg/1.png,hexagon,no,y\n",
    ),
    "binary label outside the vocabulary": BadInput(
        r"<dir>/val\.csv: row 1, column 'flag': unknown class 'maybe' for task 'flag'; expected one of \['no', 'yes'\]",
        val=f"{HEADER}\nimg/0.png,circle,maybe,x\n",
    ),
    "multilabel cell with an unknown class": BadInput(
        r"<dir>/val\.csv: row 1, column 'tags': unknown class 'w' for task 'tags'; expected one of \['x', 'y', 'z'\]",
        val=f"{HEADER}\nimg/0.png,circle,yes,x|w\n",
    ),
    "label with a line break": BadInput(
        r"<dir>/val\.csv: row 1, column 'shape': the cell 'hex\\nagon' holds a control character; labels are printable text",
        val=f'{HEADER}\nimg/0.png,"hex\nagon",yes,x\n',
    ),
    "declared classes leave out a label": BadInput(
        r"<dir>/train\.csv: row 3, column 'shape': unknown class 'triangle' for task 'shape'; "
        r"expected one of \['circle', 'square'\]",
        tasks={"shape": {"classes": ["circle", "square"]}},
    ),
    "unlabelled row of a task declared unmasked": BadInput(
        r"<dir>/val\.csv: row 2 has no label for unmasked task 'flag'; "
        r"label it or declare the task masked \(tasks\.flag\.masked=true\)",
        val=f"{HEADER}\nimg/0.png,circle,yes,x\nimg/1.png,circle,,x\n",
        tasks={"flag": {"masked": False}},
    ),
    "task without labels in training": BadInput(
        r"<dir>/train\.csv: column 'flag' has no labels; a task needs some in the training manifest",
        train="image,shape,flag\nimg/0.png,circle,\nimg/1.png,square,\n",
    ),
    "task with a single class": BadInput(
        r"<dir>/train\.csv: column 'shape' has the classes \['circle'\]; a multiclass task needs at least 2, "
        r"so declare them \(data\.tasks\.shape\.classes=\[\.\.\.\]\)",
        train="image,shape\nimg/0.png,circle\nimg/1.png,circle\n",
    ),
    # allowed sets
    "allowed set excludes the own label": BadInput(
        r"<dir>/train\.csv: row 2 has label 'square' for task 'shape' but its allowed set excludes it",
        train="image,shape,shape__allowed\nimg/0.png,circle,\nimg/1.png,square,circle\n",
    ),
    "allowed set names an unknown class": BadInput(
        r"<dir>/train\.csv: row 1, column 'shape__allowed': unknown class 'hexagon' for task 'shape'; "
        r"expected one of \['circle', 'square'\]",
        train="image,shape,shape__allowed\nimg/0.png,circle,circle|hexagon\nimg/1.png,square,\n",
    ),
    "allowed set names no class": BadInput(
        r"<dir>/train\.csv: row 1, column 'shape__allowed': an allowed set must name at least one class",
        train="image,shape,shape__allowed\nimg/0.png,circle,|\nimg/1.png,square,\n",
    ),
    "allowed set on a binary task": BadInput(
        r"<dir>/train\.csv: column 'flag__allowed': allowed sets apply to multiclass tasks; 'flag' is binary",
        train="image,flag,flag__allowed\nimg/0.png,no,\nimg/1.png,yes,\n",
    ),
    # columns and tasks
    "column no task claims": BadInput(
        rf"<dir>/val\.csv: unknown column 'colour'; the tasks are {TASKS}",
        val=f"{HEADER},colour\nimg/0.png,circle,yes,x,red\n",
    ),
    "allowed column of no task": BadInput(
        rf"<dir>/val\.csv: unknown column 'colour__allowed'; the tasks are {TASKS}",
        val=f"{HEADER},colour__allowed\nimg/0.png,circle,yes,x,red\n",
    ),
    "task column missing in val": BadInput(
        r"<dir>/val\.csv: no column for task 'tags'; add it \(empty cells: missing labels\)",
        val="image,shape,flag\nimg/0.png,circle,yes\n",
    ),
    "declared task the manifest lacks": BadInput(
        rf"<dir>/train\.csv: no column for declared task 'weather'; the task columns are {TASKS}",
        tasks={"weather": {"kind": "binary"}},
    ),
    "configured task the data lacks": BadInput(
        r"tasks\.weather: unknown task; the data provides \['flag', 'shape', 'tags'\]",
        error=ConfigError, overrides={"weather": {"loss": "focal"}},
    ),
    "no task columns": BadInput(
        r"<dir>/train\.csv: no task columns; a training manifest needs one column of labels per task",
        train="image\nimg/0.png\nimg/1.png\n",
    ),
    "column name that cannot be a task": BadInput(
        r"<dir>/train\.csv: column 'flag colour' is not a valid task name; use letters, digits, '_' or '-' "
        r"\(and not a torch\.nn\.ModuleDict attribute such as 'keys' or 'train'\)",
        train="image,flag colour\nimg/0.png,no\nimg/1.png,yes\n",
    ),
    "no input column": BadInput(
        r"<dir>/train\.csv: no 'image' or 'text' column \(the columns are \['path', 'flag'\]\); "
        r"a manifest needs exactly one input column, 'image' \(image paths\) or 'text'",
        train="path,flag\nimg/0.png,no\nimg/1.png,yes\n",
    ),
    "both input columns": BadInput(
        r"<dir>/train\.csv: both an 'image' and a 'text' column; "
        r"a manifest needs exactly one input column, 'image' \(image paths\) or 'text'",
        train="image,text,flag\nimg/0.png,hi,no\nimg/1.png,ho,yes\n",
    ),
    "empty text cell": BadInput(
        r"<dir>/train\.csv: row 2, column 'text': empty text; every row needs some text",
        train="text,flag\nhello,no\n,yes\n",
    ),
    # splits and file format
    "header-only val split": BadInput(r"<dir>/val\.csv: the manifest has no data rows", val=f"{HEADER}\n"),
    "header-only training split": BadInput(r"<dir>/train\.csv: the manifest has no data rows", train=f"{HEADER}\n"),
    "empty file": BadInput(
        r"<dir>/val\.csv: the manifest is empty; expected a header with an 'image' or a 'text' column", val=""
    ),
    "blank lines only": BadInput(
        r"<dir>/val\.csv: the manifest is empty; expected a header with an 'image' or a 'text' column", val="\n,,\n\n"
    ),
    "duplicate column": BadInput(
        r"<dir>/train\.csv: column 'flag' appears 2 times in the header; columns need unique names",
        train="image,flag,flag\nimg/0.png,no,yes\nimg/1.png,yes,no\n",
    ),
    "column without a name": BadInput(
        r"<dir>/train\.csv: column 2 of the header has no name; name it or delete the column",
        train="image,,flag\nimg/0.png,a,no\nimg/1.png,b,yes\n",
    ),
    "row with too many fields": BadInput(
        r"<dir>/val\.csv: row 2 \(line 3\) has 5 fields but the header has 4; quote cells that contain a comma",
        val=f"{HEADER}\nimg/0.png,circle,yes,x\nimg/1.png,circle,yes,x,y\n",
    ),
    "row with too few fields": BadInput(
        r"<dir>/val\.csv: row 1 \(line 2\) has 3 fields but the header has 4; an empty cell still needs its comma",
        val=f"{HEADER}\nimg/0.png,circle,yes\n",
    ),
    "unclosed quote": BadInput(
        r"<dir>/val\.csv: not a readable CSV file \(line 3: unexpected end of data\)",
        val=f'{HEADER}\nimg/0.png,"circle,yes,x\nimg/1.png,square,no,y\n',
    ),
    "not UTF-8": BadInput(
        r"<dir>/val\.csv: not a UTF-8 text file \(invalid continuation byte at byte 33\); save the CSV as UTF-8",
        val=f"{HEADER}\nimg/0.png,c\xe9rcle,yes,x\n", encoding="latin-1",
    ),
    # options of the wrong type
    "batch size of 0": BadInput(r"data\.batch_size must be at least 1, got 0", error=ConfigError, options={"batch_size": 0}),
    "non-integer worker count": BadInput(
        r"data\.num_workers must be an integer, got 'two'", error=ConfigError, options={"num_workers": "two"}
    ),
    "image size of 0": BadInput(
        r"data\.image_size must be \[height, width\] with positive integers, got \[0, 8\]",
        error=ConfigError, options={"image_size": [0, 8]},
    ),
    "declaration that is not a mapping": BadInput(
        r"data\.tasks must map task names to options, e\.g\. \{tags: \{kind: multilabel\}\}; "
        r"got \{'tags': 'multilabel'\}",
        error=ConfigError, tasks={"tags": "multilabel"},
    ),
    "declared option of the wrong type": BadInput(
        r"task 'shape': weight must be a number, got 'heavy'", error=ConfigError, tasks={"shape": {"weight": "heavy"}}
    ),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``img/0.png`` .. ``img/3.png`` (small RGB images of different sizes) and the bad images."""
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (6 + i, 5), (60 * i, 20, 200)).save(tmp_path / "img" / f"{i}.png")
    for name, make in IMAGE_MAKERS.items():
        make(tmp_path / "img" / name)
    return tmp_path


def write_manifest(folder: Path, split: str, text: str | None, encoding: str) -> Path:
    path = folder / f"{split}.csv"
    if text is not None:
        path.write_bytes(write(folder, path.name, text).read_text().encode(encoding))
    return path


def load_training_data(folder: Path, case: BadInput) -> None:
    """What ``mhc-train`` does with the data before the first step, and every batch of it."""
    options = {"image_size": [8, 8], "batch_size": 4, **case.options}
    dm = ManifestDataModule(
        write_manifest(folder, "train", case.train, case.encoding),
        val=write_manifest(folder, "val", case.train if case.val == AS_TRAIN else case.val, case.encoding),
        tasks=case.tasks, **options,
    )
    dm.set_tasks(resolve_tasks(dm.task_specs(), case.overrides))
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for _ in loader:
            pass


def assert_one_line(err: BaseException, pattern: str, folder: Path) -> None:
    message = str(err)
    assert "\n" not in message and len(message.splitlines()) == 1
    expected = pattern.replace("<dir>", re.escape(str(folder)))
    assert re.fullmatch(expected, message), f"\n  message: {message}\n  pattern: {expected}"


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_is_one_line_naming_where_and_what(folder: Path, name: str) -> None:
    case = CATALOGUE[name]
    with pytest.raises(MhcError) as info:
        load_training_data(folder, case)
    assert type(info.value) is case.error
    assert_one_line(info.value, case.pattern, folder)


def test_good_files_load(folder: Path) -> None:
    load_training_data(folder, BadInput(pattern=""))  # the catalogue's baseline raises nothing


def test_image_too_large_to_decode_safely(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses images over twice this
    Image.new("RGB", (20, 20)).save(folder / "img" / "huge.png")
    case = BadInput(
        r"<dir>/val\.csv: row 1, column 'image': image '<dir>/img/huge\.png' is too large to read safely \(.*400 pixels.*\)",
        val=f"{HEADER}\nimg/huge.png,circle,yes,x\n",
    )
    with pytest.raises(DataError) as info:
        load_training_data(folder, case)
    assert_one_line(info.value, case.pattern, folder)


# -- inputs that are accepted ------------------------------------------------------------------


def sixteen_bit(path: Path) -> None:
    Image.fromarray(np.array([[0, 32896], [65535, 257]], dtype=np.uint16)).save(path)


def palette(path: Path) -> None:
    Image.new("RGB", (2, 2), (255, 0, 0)).quantize().save(path)


# file name -> how to write it, and its pixels as RGB after loading, row by row
CONVERTED_MODES: dict[str, tuple[Callable[[Path], None], list[list[list[int]]]]] = {
    "grey16.png": (sixteen_bit, [[[0] * 3, [128] * 3], [[255] * 3, [1] * 3]]),
    "grey.png": (lambda p: Image.new("L", (2, 2), 100).save(p), [[[100] * 3] * 2] * 2),
    "grey_alpha.png": (lambda p: Image.new("LA", (2, 2), (100, 7)).save(p), [[[100] * 3] * 2] * 2),
    "rgba.png": (lambda p: Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(p), [[[10, 20, 30]] * 2] * 2),
    "bilevel.png": (lambda p: Image.new("1", (2, 2), 1).save(p), [[[255] * 3] * 2] * 2),
    "palette.png": (palette, [[[255, 0, 0]] * 2] * 2),
    "cmyk.tiff": (lambda p: Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(p), [[[255, 0, 0]] * 2] * 2),
}


@pytest.mark.parametrize("name", list(CONVERTED_MODES))
def test_other_image_modes_are_converted_to_rgb(folder: Path, name: str) -> None:
    make, pixels = CONVERTED_MODES[name]
    make(folder / "img" / name)
    train = write(folder, "train.csv", f"image,flag\nimg/{name},no\nimg/0.png,yes\n")
    dm = ManifestDataModule(train, image_size=[2, 2])  # the file's own size: no resampling
    dm.setup("fit")
    image = dm.splits["train"][0]["image"]  # float [3, H, W] in [0, 1]
    assert image.shape == (3, 2, 2)
    assert (image * 255).round().permute(1, 2, 0).tolist() == pixels


@pytest.mark.parametrize("size", [(1, 1), (300, 7), (8, 8), (5, 64)])
def test_images_of_any_size_are_resized(folder: Path, size: tuple[int, int]) -> None:
    Image.new("RGB", size, (0, 128, 255)).save(folder / "img" / "odd.png")
    train = write(folder, "train.csv", "image,flag\nimg/odd.png,no\nimg/0.png,yes\n")
    dm = ManifestDataModule(train, image_size=[8, 8], batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8)
    odd = dm.splits["train"][0]["image"]
    torch.testing.assert_close(odd, torch.tensor([0.0, 128 / 255, 1.0])[:, None, None].expand(3, 8, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize("text", ["image\nimg/0.png\nimg/1.png\n", TRAIN], ids=["no label columns", "label columns"])
def test_without_tasks_label_columns_are_ignored(folder: Path, text: str) -> None:
    """Pretraining reads inputs only: a manifest with or without labels serves its images."""
    dm = ManifestDataModule(write(folder, "train.csv", text), image_size=[8, 8])
    dm.set_tasks([])
    dm.setup("fit")
    assert dm.splits["train"][1]["image"].shape == (3, 8, 8) and dm.splits["train"][1]["targets"] == {}
