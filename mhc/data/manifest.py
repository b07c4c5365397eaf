"""Manifests: the table of inputs and labels that users bring (CSV, or Parquet with pyarrow).

One row per sample, with one input column: ``image`` (the image path, relative to the
manifest's folder or absolute) or ``text``. Every other column is a task, except
``<task>__allowed`` columns::

    image,shape,size,marks,shape__allowed
    img/0.png,circle,small,dot|ring,circle|square
    img/1.png,square,,-,
    img/2.png,,large,,

A text manifest's samples carry token ids (``tokens``, long [max_length], right-padded with
0) from a tokenizer fitted on the training split only (:mod:`mhc.processing.tokenizer`); the
network saves it, so evaluation and prediction encode with the checkpoint's tokenizer::

    text,topic,urgent
    "the printer is on fire",hardware,yes
    can I get a refund?,billing,no

Cells:

* an empty cell means the label is missing (the task becomes masked, see below), and so does
  a label cell that is one of ``missing_cells`` (by default the words spreadsheets and
  pandas write for a missing value: ``NaN``, ``NA``, ``N/A``, ``null``, ``None``, ...;
  ``data.missing_cells=[]`` reads them as class names);
* a label cell never holds a control character (a tab, a line break, ``\x00``, ...);
* a multiclass or binary cell is a class name;
* a multilabel cell is ``|``-separated class names; ``-`` or ``none`` is the empty set
  (both are reserved words in multilabel cells, never class names);
* a ``<task>__allowed`` cell is ``|``-separated class names the sample may be predicted as
  (a data-given output mask, multiclass tasks only); an empty cell allows every class.

Tasks not declared in the data config are inferred from the training manifest: a column
with a ``|`` in any cell is multilabel; one with exactly two values forming a yes/no pair
(``0/1``, ``false/true``, ``no/yes``, ...) is binary with classes ``[negative, positive]``;
any other is multiclass. Classes are the sorted distinct values (numerically when all are
numbers). A task with empty cells in the training manifest, or in the validation or test
manifest, is masked (a sample of a larger set may hold every label of a task that the
evaluation splits miss on a few rows). Declarations
(``tasks: {name: {kind, classes, masked, parent, allowed_by_parent, ...}}``) take
precedence over inference; whatever they leave out is inferred.

A CSV manifest is UTF-8 (with or without a BOM); column names are unique, and every row has
as many cells as the header (rows of empty cells are skipped). Bad data is one
:class:`~mhc.errors.DataError` naming the file, the row and the column. Rows are numbered
from 1 over the data rows (the header is not counted): ``row 1`` is the first image.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from mhc.data.datamodule import TaskDataModule, check_count, check_image_size
from mhc.data.hierarchy import allowed_from_rows, hint, undeclared_parents
from mhc.data.labels import MISSING, encode_batch, sample_of, validate_labels
from mhc.errors import ConfigError, DataError
from mhc.processing.images import read_image
from mhc.processing.processors import ImageProcessor, Processor, TextProcessor
from mhc.processing.tokenizer import FITTED_KINDS, Tokenizer, fit_tokenizer
from mhc.tasks import TaskSpec, check_task_graph, valid_task_name

log = logging.getLogger(__name__)
CACHES = ("auto", "memory", "none")
CACHE_SHARE = 0.25  # cache=auto: decoded images may take this share of the memory available

IMAGE_COLUMN = "image"
TEXT_COLUMN = "text"
INPUT_COLUMNS = (IMAGE_COLUMN, TEXT_COLUMN)  # a manifest has exactly one of them
ALLOWED_SUFFIX = "__allowed"
SEPARATOR = "|"
EMPTY_SET = frozenset({"-", "none"})
# Label cells read as missing by default: what spreadsheets, pandas and R write for a missing value.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (category Cc)
MISSING_CELLS = ("NaN", "nan", "-NaN", "NA", "<NA>", "N/A", "n/a", "#N/A", "NULL", "null", "None")
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
# Value pairs read as a binary task, each as (negative, positive), compared case-insensitively.
BOOLEAN_PAIRS: tuple[tuple[str, str], ...] = (
    ("0", "1"),
    ("0.0", "1.0"),
    ("false", "true"),
    ("f", "t"),
    ("no", "yes"),
    ("n", "y"),
    ("negative", "positive"),
    ("neg", "pos"),
    ("off", "on"),
)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A manifest's cells as stripped text (``""`` for an empty cell), by column."""

    source: str
    root: Path
    columns: dict[str, list[str]]
    first_row: int = 0  # the data row of the first cells (a block of a streamed split)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    @property
    def input_column(self) -> str:
        """``image`` or ``text``: the column holding each sample's input."""
        return next(c for c in INPUT_COLUMNS if c in self.columns)

    def where(self, row: int, column: str) -> str:
        """Where a message about a cell points (see :func:`location`)."""
        return location(self.source, self.first_row + row, column)


def row_name(index: int) -> str:
    """The spreadsheet-style name of a 0-based data row index: ``row 1`` is the first data row."""
    return f"row {index + 1}"


def location(source: str, row: int, column: str) -> str:
    """``"<file>: row <n>, column '<name>'"`` for a 0-based row index: where a message points."""
    return f"{source}: {row_name(row)}, column '{column}'"


def read_manifest(path: str | Path) -> Manifest:
    """Read a CSV (or Parquet) manifest; a missing, empty or unparsable file is a :class:`DataError`."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError(f"{source}: manifest file not found")
    frame = _read_parquet(path) if path.suffix.lower() in PARQUET_SUFFIXES else _read_csv(path)
    if len(frame) == 0:
        raise DataError(f"{source}: the manifest has no data rows")
    names = [str(name).strip() for name in frame.columns]
    check_header(source, names)
    columns = {name: [_cell_text(v) for v in frame.iloc[:, i].tolist()] for i, name in enumerate(names)}
    inputs = [c for c in INPUT_COLUMNS if c in columns]
    if len(inputs) != 1:
        found = "both an 'image' and a 'text' column" if inputs else f"no 'image' or 'text' column (the columns are {list(columns)})"
        raise DataError(f"{source}: {found}; a manifest needs exactly one input column, 'image' (image paths) or 'text'")
    return Manifest(source, path.parent, columns)


def check_header(source: str, names: Sequence[str]) -> None:
    """Every column has a name, and no name appears twice (cells would be silently dropped)."""
    for position, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{source}: column {position} of the header has no name; name it or delete the column")
        if names.count(name) > 1:
            raise DataError(f"{source}: column '{name}' appears {names.count(name)} times in the header; columns need unique names")


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV manifest's cells as text: UTF-8 (a BOM is dropped), blank rows skipped, and every
    row as many fields as the header (a longer or shorter row would shift or drop cells)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); save the CSV as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    rows, lines, line = [], [], 1  # lines: where each row starts (a quoted cell may span lines)
    previous_limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))  # no cell is longer than the file
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file (line {reader.line_num}: {err})") from None
    finally:
        csv.field_size_limit(previous_limit)
    if not rows:
        raise DataError(f"{path}: the manifest is empty; expected a header with an 'image' or a 'text' column")
    header, body = rows[0], rows[1:]
    for index, row in enumerate(body):
        if len(row) != len(header):
            hint = "quote cells that contain a comma" if len(row) > len(header) else "an empty cell still needs its comma"
            raise DataError(
                f"{path}: {row_name(index)} (line {lines[index + 1]}) has {len(row)} field{'s' * (len(row) != 1)} "
                f"but the header has {len(header)}; {hint}"
            )
    return pd.DataFrame(body, columns=header, dtype=str) if body else pd.DataFrame(columns=header)


def _read_parquet(path: Path) -> pd.DataFrame:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"{path}: reading a Parquet manifest needs pyarrow (pip install pyarrow), or use CSV")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())})") from None


def _cell_text(value: Any) -> str:
    """A cell as stripped text: missing values are ``""``, integral floats lose their ``.0``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def label_cells(manifest: Manifest, missing: Sequence[str] = MISSING_CELLS) -> Manifest:
    """``manifest`` with its label cells that are one of ``missing`` made empty (missing labels,
    counted in an INFO message); a label cell holding a control character is a :class:`DataError`."""
    missing = frozenset(missing)
    columns = dict(manifest.columns)
    for column, cells in manifest.columns.items():
        if column in INPUT_COLUMNS:
            continue
        for row, cell in enumerate(cells):
            if CONTROL_CHARACTER.search(cell):
                raise DataError(f"{manifest.where(row, column)}: the cell {cell!r} holds a control character; "
                                "labels are printable text")
        found = Counter(cell for cell in cells if cell in missing)
        if found:
            columns[column] = ["" if cell in missing else cell for cell in cells]
            log.info(f"{manifest.source}: {sum(found.values())} cell(s) of column '{column}' read as missing labels "
                     f"({', '.join(sorted(found))}); data.missing_cells lists the words read so")
    return replace(manifest, columns=columns)


def split_set(cell: str) -> list[str]:
    """The class names of a ``|``-separated cell (empty parts dropped)."""
    return [part.strip() for part in cell.split(SEPARATOR) if part.strip()]


def task_columns(manifest: Manifest) -> list[str]:
    """The task columns, in file order: all but the input column and ``<task>__allowed``."""
    return [c for c in manifest.columns if c not in INPUT_COLUMNS and not c.endswith(ALLOWED_SUFFIX)]


# -- task inference --------------------------------------------------------------------------


def infer_tasks(manifest: Manifest, declared: Mapping[str, Mapping[str, Any]] | None = None,
                evaluated: Sequence[Manifest] = ()) -> list[TaskSpec]:
    """The tasks of a training manifest: declared options first, the rest inferred from the cells.

    ``declared`` maps task name -> :class:`~mhc.tasks.TaskSpec` fields; every declared task
    needs a column, and every column is a task. ``evaluated``: the validation and test
    manifests, where a missing label makes its task masked too.
    """
    declared = dict(declared or {})
    names = task_columns(manifest)
    if not names:
        raise DataError(f"{manifest.source}: no task columns; a training manifest needs one column of labels per task")
    for name in names:
        if not valid_task_name(name):
            raise DataError(
                f"{manifest.source}: column '{name}' is not a valid task name; use letters, digits, '_' or '-' "
                f"(and not a torch.nn.ModuleDict attribute such as 'keys' or 'train')"
            )
    for name in declared:
        if name not in names:
            raise DataError(f"{manifest.source}: no column for declared task '{name}'; the task columns are {names}")
    tasks = [infer_task(manifest, name, declared.get(name), evaluated) for name in names]
    tasks = allowed_from_rows(tasks, [manifest.columns, *(other.columns for other in evaluated)])
    check_task_graph(tasks)
    return tasks


def _set_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Declared options without the unset (``None``) ones."""
    return {key: value for key, value in dict(options or {}).items() if value is not None}


def infer_task(manifest: Manifest, name: str, options: Mapping[str, Any] | None = None,
               evaluated: Sequence[Manifest] = ()) -> TaskSpec:
    """One task from its column, with ``options`` overriding what is inferred; masked if a cell
    of its column is empty in ``manifest`` or in one of the ``evaluated`` manifests."""
    options = _set_options(options)
    cells = manifest.columns[name]
    values = [cell for cell in cells if cell]
    if not values:
        raise DataError(f"{manifest.source}: column '{name}' has no labels; a task needs some in the training manifest")
    kind = options.get("kind") or infer_kind(values)
    classes = [str(c) for c in options.get("classes") or infer_classes(kind, values)]
    if len(classes) < 2 or (kind == "binary" and len(classes) != 2):
        raise DataError(
            f"{manifest.source}: column '{name}' has the classes {classes}; a {kind} task needs "
            f"{'exactly' if kind == 'binary' else 'at least'} 2, so declare them (data.tasks.{name}.classes=[...])"
        )
    masked = options.get("masked", len(values) < len(cells)
                         or any(not cell for other in evaluated for cell in other.columns.get(name, ())))
    return TaskSpec.from_dict({**options, "name": name, "kind": kind, "classes": classes, "masked": masked})


def infer_kind(values: Sequence[str]) -> str:
    """``multilabel`` if any cell is a ``|`` set, ``binary`` for a yes/no pair, else ``multiclass``."""
    if any(SEPARATOR in v for v in values):
        return "multilabel"
    return "binary" if _boolean_order(set(values)) else "multiclass"


def infer_classes(kind: str, values: Sequence[str]) -> list[str]:
    """Class names seen in non-empty cells: ``[negative, positive]`` for a yes/no pair, else sorted."""
    if kind == "multilabel":
        names = {part for v in values for part in split_set(v) if part.lower() not in EMPTY_SET}
    else:
        names = set(values)
    if kind == "binary":
        return _boolean_order(names) or _sorted_classes(names)
    return _sorted_classes(names)


def _boolean_order(values: set[str]) -> list[str] | None:
    """``[negative, positive]`` spelled as in the data if ``values`` is a yes/no pair, else ``None``."""
    by_lower = {v.lower(): v for v in values}
    if len(values) != 2 or len(by_lower) != 2:
        return None
    for negative, positive in BOOLEAN_PAIRS:
        if set(by_lower) == {negative, positive}:
            return [by_lower[negative], by_lower[positive]]
    return None


def _sorted_classes(names: set[str]) -> list[str]:
    """Sorted names; numerically when every name is a finite number, so ``2`` comes before ``10``
    (a total order: the same classes in the same order in every process)."""
    try:
        numbers = {name: float(name) for name in names}
    except ValueError:
        return sorted(names)
    if not all(math.isfinite(number) for number in numbers.values()):
        return sorted(names)
    return sorted(names, key=lambda name: (numbers[name], name))


# -- encoding --------------------------------------------------------------------------------


def check_columns(manifest: Manifest, tasks: Sequence[TaskSpec], labelled: bool = True) -> None:
    """Every task has a column (unless unlabelled) and every column is a task's.

    An unlabelled manifest (prediction) may leave out task columns and carry other columns,
    but an ``__allowed`` column must still belong to a task (unless there are no tasks at all,
    as in pretraining).
    """
    names = [t.name for t in tasks]
    for column in manifest.columns:
        if column in INPUT_COLUMNS:
            continue
        task = column.removesuffix(ALLOWED_SUFFIX)
        if task not in names and (labelled or (column.endswith(ALLOWED_SUFFIX) and names)):
            raise DataError(f"{manifest.source}: unknown column '{column}'; the tasks are {names}")
    if labelled:
        for name in names:
            if name not in manifest.columns:
                raise DataError(f"{manifest.source}: no column for task '{name}'; add it (empty cells: missing labels)")
    for task in tasks:
        if task.name + ALLOWED_SUFFIX in manifest.columns and task.kind != "multiclass":
            raise DataError(
                f"{manifest.source}: column '{task.name}{ALLOWED_SUFFIX}': allowed sets apply to multiclass tasks; "
                f"'{task.name}' is {task.kind}"
            )


def class_indices(task: TaskSpec, names: Sequence[str], where: str) -> list[int]:
    """Indices of ``names`` in ``task.classes``; an unknown name is a :class:`DataError` at ``where``."""
    index = {name: i for i, name in enumerate(task.classes)}
    for name in names:
        if name not in index:
            raise DataError(f"{where}: unknown class '{name}' for task '{task.name}'; expected one of {task.classes}")
    return [index[name] for name in names]


def encode_labels(manifest: Manifest, task: TaskSpec) -> np.ndarray:
    """One task's column as encoded labels (see :mod:`mhc.data.labels`); no column: all missing."""
    cells = manifest.columns.get(task.name, [""] * len(manifest))
    if task.kind == "multilabel":
        labels = np.full((len(cells), task.num_classes), MISSING, dtype=np.int64)
    else:
        labels = np.full(len(cells), MISSING, dtype=np.int64)
    for row, cell in enumerate(cells):
        if not cell:
            continue
        where = manifest.where(row, task.name)
        if task.kind == "multilabel":
            names = [] if cell.lower() in EMPTY_SET else split_set(cell)
            labels[row] = 0
            labels[row, class_indices(task, names, where)] = 1
        else:
            labels[row] = class_indices(task, [cell], where)[0]
    return labels


def encode_allowed(manifest: Manifest, task: TaskSpec) -> np.ndarray:
    """Bool [N, C] allowed classes from ``<task>__allowed``; an empty cell allows every class."""
    column = task.name + ALLOWED_SUFFIX
    allowed = np.ones((len(manifest), task.num_classes), dtype=bool)
    for row, cell in enumerate(manifest.columns[column]):
        if not cell:
            continue
        where = manifest.where(row, column)
        indices = class_indices(task, split_set(cell), where)
        if not indices:
            raise DataError(f"{where}: an allowed set must name at least one class")
        allowed[row] = False
        allowed[row, indices] = True
    return allowed


def image_files(manifest: Manifest) -> list[Path]:
    """Image paths resolved against the manifest's folder; every file must exist."""
    files = []
    for row, cell in enumerate(manifest.columns[IMAGE_COLUMN]):
        if not cell:
            raise DataError(f"{manifest.where(row, IMAGE_COLUMN)}: no image path")
        path = Path(cell).expanduser()
        files.append(path if path.is_absolute() else manifest.root / path)
    missing = [row for row, path in enumerate(files) if not path.is_file()]
    if missing:
        others = len(missing) - 1
        more = f" (and {others} more row{'s' if others > 1 else ''})" if others else ""
        row = missing[0]
        problem = f"'{files[row]}' is a folder, not an image file" if files[row].is_dir() else f"image file '{files[row]}' not found"
        raise DataError(f"{manifest.where(row, IMAGE_COLUMN)}: {problem}{more}")
    return files


def encode_texts(manifest: Manifest, processor: TextProcessor) -> Tensor:
    """Token ids long [N, max_length] of the ``text`` column; an empty cell is a :class:`DataError`
    naming its row (an all-padding sequence has nothing to attend to)."""
    rows = []
    for row, text in enumerate(manifest.columns[TEXT_COLUMN]):
        where = manifest.where(row, TEXT_COLUMN)
        if not text:
            raise DataError(f"{where}: empty text; every row needs some text")
        try:
            rows.append(processor.batch([text]))
        except DataError as err:  # a word outside a fixed vocabulary
            raise DataError(f"{where}: {err}") from None
    return torch.cat(rows)


# -- dataset and data module -----------------------------------------------------------------


class ManifestDataset(Dataset):
    """One manifest split: inputs and labels, encoded and checked up front.

    Samples follow :mod:`mhc.data.labels`: an image manifest's carry ``image`` (read lazily
    and resized), a text manifest's ``tokens`` (encoded here with ``tokenizer``). Row order is
    kept, and ``inputs`` holds each row's input cell (image path or text) as written, so
    predictions can be joined back to the manifest.

    Args:
        manifest: the split's cells (:func:`read_manifest`).
        tasks: the tasks to encode, usually inferred from the training manifest.
        processor: reads and resizes images, or encodes texts (a text processor with a
            tokenizer for a text manifest).
        labelled: ``False`` for prediction: task columns are optional, labels may be missing
            on any task, and columns that are not tasks are ignored.
        images: what each row's image is read from (anything the processor reads: a path, a
            file object), in row order, instead of the ``image`` column's paths (data sets that
            hold their images, :mod:`mhc.data.hf`).
    """

    def __init__(
        self,
        manifest: Manifest,
        tasks: Sequence[TaskSpec],
        processor: Processor,
        labelled: bool = True,
        images: Sequence[Any] | None = None,
    ) -> None:
        check_columns(manifest, tasks, labelled)
        self.source = manifest.source
        self.tasks = list(tasks)
        self.processor = processor
        self.labels = {t.name: encode_labels(manifest, t) for t in self.tasks}
        self.allowed = {
            t.name: encode_allowed(manifest, t) for t in self.tasks if t.name + ALLOWED_SUFFIX in manifest.columns
        }
        checked = self.tasks if labelled else [replace(t, masked=True) for t in self.tasks]
        names = [row_name(manifest.first_row + i) for i in range(len(manifest))]
        self.first_row = manifest.first_row
        validate_labels(checked, self.labels, self.source, sample_names=names, allowed=self.allowed)
        self.input_column = manifest.input_column
        self.inputs: list[str] = list(manifest.columns[self.input_column])
        if self.input_column == TEXT_COLUMN:
            if not isinstance(processor, TextProcessor) or processor.tokenizer is None:
                raise ValueError(f"{self.source}: a text manifest needs a text processor with a tokenizer")
            self.tokens = encode_texts(manifest, processor)  # [N, max_length]
        else:
            self.files = image_files(manifest) if images is None else images
        self.cache: Tensor | None = None  # uint8 [N, 3, H, W] after cache_images()

    def __len__(self) -> int:
        return len(self.inputs)

    def load_images(self, indices: Sequence[int]) -> Tensor:
        """Float [B, 3, H, W] in [0, 1] at the processor's size; an unreadable file names its row."""
        if self.cache is not None:
            return self.cache[list(indices)].float() / 255  # as image_tensor reads 8-bit pixels
        return torch.stack([self.read_row(index, self.processor.load) for index in indices])

    def read_row(self, index: int, reader: Any) -> Any:
        """``reader(path)`` of row ``index``'s image file; an unreadable file names its row."""
        try:
            return reader(self.files[index])
        except DataError as err:
            raise DataError(f"{location(self.source, self.first_row + index, IMAGE_COLUMN)}: {err}") from None

    def cache_images(self, threads: int = 4) -> None:
        """Decode every image once, in ``threads`` threads, and keep them in memory as 8-bit pixels
        at the processor's size (exact for images stored at that size; a resized image is rounded
        to 8 bits). Loader workers share the cache with the process that built it."""
        height, width = self.processor.size  # type: ignore[attr-defined]
        cache = torch.empty(len(self.files), 3, height, width, dtype=torch.uint8)

        def decode(index: int) -> None:
            pixels = torch.from_numpy(np.array(self.read_row(index, read_image))).permute(2, 0, 1)  # a writable copy
            if tuple(pixels.shape[-2:]) != (height, width):  # resized as the processor does, back to 8 bits
                pixels = self.processor.resize(pixels.float() / 255).mul(255).round_().clamp_(0, 255).to(torch.uint8)  # type: ignore[attr-defined]
            cache[index] = pixels

        with ThreadPoolExecutor(max(1, threads)) as pool:
            for _ in pool.map(decode, range(len(self.files))):
                pass
        self.cache = cache

    def gather(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples at ``indices``, collated in one gather (:class:`~mhc.data.labels.GatheredBatches`)."""
        batch: dict[str, Any] = (
            {"tokens": self.tokens[list(indices)]} if self.input_column == TEXT_COLUMN else {"image": self.load_images(indices)}
        )
        batch["targets"], batch["label_mask"] = encode_batch(self.tasks, self.labels, indices)
        if self.allowed:
            rows = np.asarray(indices, dtype=np.int64)
            batch["allowed"] = {name: torch.from_numpy(mask[rows]) for name, mask in self.allowed.items()}
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return sample_of(self.gather([index]))


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _plain(value: Any) -> Any:
    """Hydra passes ``DictConfig``/``ListConfig``; tasks must become plain, serialisable data."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class ManifestDataModule(TaskDataModule):
    """Train/val/test/predict splits from manifest files; tasks come from the training manifest.

    Every split has the training manifest's input column (``image`` or ``text``), or, when
    serving a checkpoint (:meth:`use_processor`), the one its model reads.

    Args:
        train, val, test, predict: manifest paths (CSV, or Parquet with pyarrow). Only the
            splits that are used need one; ``train`` is needed to infer tasks unless
            :meth:`set_tasks` supplies them (e.g. from a checkpoint, for prediction).
        tasks: task name -> :class:`~mhc.tasks.TaskSpec` fields declaring a column (kind,
            classes, masked, parent, allowed_by_parent, ...); what is left out is inferred.
        image_size: ``[height, width]`` images are resized to.
        mean, std: per-channel normalisation the network applies.
        tokenizer: text manifests: ``char`` or ``wordpiece`` (fitted on the training split's
            texts) or ``byte``.
        max_length: text manifests: tokens per text (longer texts are cut).
        missing_cells: label cells read as missing labels besides the empty cell
            (:data:`MISSING_CELLS` by default; ``()``: every word is a class name).
        min_count, max_size: ``char`` and ``wordpiece`` tokenizers: keep characters (subwords)
            seen at least ``min_count`` times in training, at most ``max_size`` ids in all
            (reserved ids included).
        **loader: :class:`TaskDataModule` options (``batch_size``, ``num_workers``, ...).

    Example::

        dm = ManifestDataModule("data/train.csv", val="data/val.csv", tasks={"flag": {"masked": True}})
        dm.task_specs()   # [TaskSpec(name='shape', kind='multiclass', ...), ...]
    """

    def __init__(
        self,
        train: str | Path | None,
        val: str | Path | None = None,
        test: str | Path | None = None,
        predict: str | Path | None = None,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        image_size: Sequence[int] = (64, 64),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        tokenizer: str = "char",
        max_length: int = 128,
        min_count: int = 1,
        max_size: int | None = None,
        cache: str = "auto",
        ignore_columns: Sequence[str] = (),
        missing_cells: Sequence[str] = MISSING_CELLS,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.files = {"train": train, "val": val, "test": test, "predict": predict}
        if cache not in CACHES:
            raise ConfigError(f"data.cache must be one of {list(CACHES)}, got {cache!r}")
        self.cache = cache
        self.decoded: dict[tuple[str, tuple[int, ...]], Tensor] = {}  # (split, size) -> its cached pixels
        self.read: dict[tuple[str, str], Manifest] = {}  # (split, file) -> the validation and test manifests
        self.ignore_columns = [str(c) for c in _plain(ignore_columns) or ()]
        if set(self.ignore_columns) & set(INPUT_COLUMNS):
            raise ConfigError(f"data.ignore_columns may not name an input column {list(INPUT_COLUMNS)}; got {self.ignore_columns}")
        self.missing_cells = [str(c) for c in _plain(missing_cells) or ()]
        if "" in self.missing_cells:
            raise ConfigError("data.missing_cells: an empty cell is always a missing label; list only words, e.g. [NaN, NA]")
        declared = _plain(tasks) or {}
        if not isinstance(declared, Mapping) or not all(isinstance(o, Mapping) or o is None for o in declared.values()):
            raise ConfigError(f"data.tasks must map task names to options, e.g. {{tags: {{kind: multilabel}}}}; got {declared!r}")
        self.declared: dict[str, dict[str, Any]] = dict(declared)
        self.image_size = check_image_size(_plain(image_size))
        self.mean = [float(m) for m in _plain(mean)]
        self.std = [float(s) for s in _plain(std)]
        if tokenizer not in FITTED_KINDS:
            raise ConfigError(f"data.tokenizer must be one of {list(FITTED_KINDS)}, got '{tokenizer}'")
        self.tokenizer_kind = tokenizer
        self.max_length = check_count("max_length", max_length, minimum=1)
        self.tokenizer_options = {
            "min_count": check_count("min_count", min_count, minimum=1),
            "max_size": None if max_size is None else check_count("max_size", max_size, minimum=1),
        }
        self.tokenizer: Tokenizer | None = None  # fitted on first use, or a checkpoint's
        self.served_input: str | None = None  # the input column of a checkpoint's model
        self.hinted = False  # whether the hierarchies the data suggests were named

    def manifest(self, split: str) -> Manifest:
        """The manifest of ``split`` without the ignored columns. Training, validation and test
        manifests are read once and kept (tasks are inferred from all three); one to predict is
        read each time (it may be large, and read once)."""
        if split == "train":
            return self.train_manifest
        if split == "predict":
            return self.without_ignored(read_manifest(self._path(split)))
        key = (split, str(self._path(split)))
        if key not in self.read:
            self.read[key] = self.without_ignored(read_manifest(key[1]))
        return self.read[key]

    @cached_property
    def train_manifest(self) -> Manifest:
        """The training manifest, read once: tasks are inferred from it."""
        manifest = read_manifest(self._path("train"))
        absent = [c for c in self.ignore_columns if c not in manifest.columns]
        if absent:
            raise ConfigError(f"data.ignore_columns names {absent}, which {manifest.source} does not have; "
                              f"its columns are {list(manifest.columns)}")
        return self.without_ignored(manifest)

    def without_ignored(self, manifest: Manifest) -> Manifest:
        """``manifest`` without the columns of ``ignore_columns`` (e.g. an output mask left out),
        its ``missing_cells`` read as missing labels."""
        if self.ignore_columns:
            manifest = replace(manifest, columns={k: v for k, v in manifest.columns.items() if k not in self.ignore_columns})
        return label_cells(manifest, self.missing_cells)

    def _path(self, split: str) -> str | Path:
        path = self.files.get(split)
        if path is None:
            raise DataError(f"no {split} manifest: set data.{split}=path/to/{split}.csv")
        return path

    def task_specs(self) -> list[TaskSpec]:
        tasks = infer_tasks(self.train_manifest, self.declared, self.evaluation_manifests())
        if not self.hinted:  # once a run, for columns that look like an undeclared hierarchy
            self.hinted = True
            for child, parent in undeclared_parents(tasks, self.train_manifest.columns).items():
                log.info(f"{self.train_manifest.source}: {hint(child, parent)}")
        return tasks

    def evaluation_manifests(self) -> list[Manifest]:
        """The validation and test manifests given, whose missing labels make their tasks masked."""
        return [self.manifest(split) for split in ("val", "test") if self.has_split(split)]

    def has_split(self, split: str) -> bool:
        return self.files.get(split) is not None

    def input_column(self) -> str:
        """``image`` or ``text``: what a checkpoint's model reads, else what the training manifest has."""
        return self.served_input or self.train_manifest.input_column

    def input_kind(self) -> str:
        return self.input_column()  # read from the header: no tokenizer is fitted

    def train_labels(self, tasks: Sequence[TaskSpec]) -> dict[str, np.ndarray]:
        """The built training split's labels; before it is built, read from the training manifest's
        columns (no image decoded, no tokenizer fitted)."""
        if "train" in self.splits:
            return super().train_labels(tasks)
        return {task.name: encode_labels(self.train_manifest, task)[self.kept_rows()] for task in tasks}

    def train_words(self) -> np.ndarray | None:
        """Words per training text (of a text manifest), read from its column: how long the texts are."""
        if self.input_kind() != TEXT_COLUMN:
            return None
        words = np.array([len((text or "").split()) for text in self.train_manifest.columns[TEXT_COLUMN]])
        return words[self.kept_rows()]

    def kept_rows(self) -> list[int] | slice:
        """The training manifest's rows the training split keeps (``data.train_fraction``)."""
        return self.subset_indices(len(self.train_manifest)) if self.train_fraction < 1.0 else slice(None)

    def text_tokenizer(self) -> Tokenizer:
        """The tokenizer of text manifests: a checkpoint's, else fitted on the training split only."""
        if self.tokenizer is None:
            texts = [text for text in self.train_manifest.columns[TEXT_COLUMN] if text]
            self.tokenizer = fit_tokenizer(self.tokenizer_kind, texts, **self.tokenizer_options)
        return self.tokenizer

    def build_split(self, split: str) -> ManifestDataset:
        """A split's dataset; asking for a split without a manifest is a :class:`DataError`."""
        manifest = self.manifest(split)
        expected = self.input_column()
        if manifest.input_column != expected:
            reads = "the checkpoint's model reads" if self.served_input else f"the training manifest {self.files['train']} has"
            raise DataError(
                f"{manifest.source}: has an '{manifest.input_column}' column, but {reads} '{expected}'; "
                f"every split needs a '{expected}' column"
            )
        tasks = self.active_tasks()
        # Without tasks (pretraining: labels ignored) label columns are ignored, as when predicting.
        dataset = self.dataset(split, manifest, tasks, labelled=split != "predict" and bool(tasks))
        if split != "predict" and manifest.input_column == IMAGE_COLUMN and self.caches(len(dataset)):
            # decoded once per split and size: a split rebuilt for new task options keeps its pixels
            key = (split, tuple(dataset.processor.size))  # type: ignore[attr-defined]
            if key not in self.decoded:
                dataset.cache_images(threads=min(8, os.cpu_count() or 1))
                self.decoded[key] = dataset.cache  # type: ignore[assignment]
            dataset.cache = self.decoded[key]
        return dataset

    def dataset(self, split: str, manifest: Manifest, tasks: Sequence[TaskSpec], labelled: bool) -> ManifestDataset:
        """The dataset of one split's manifest (a subclass passes where its images are read from)."""
        return ManifestDataset(manifest, tasks, self.processor(), labelled=labelled)

    def caches(self, count: int) -> bool:
        """Whether ``count`` decoded images are kept in memory: ``cache=memory`` always; ``auto``
        when they take at most a quarter of the memory available now."""
        if self.cache != "auto":
            return self.cache == "memory"
        height, width = self.image_size
        size, available = count * 3 * height * width, available_memory()
        if available is None or size > CACHE_SHARE * available:
            if available is not None:
                log.info(f"not caching {count} images ({size / 2**20:.0f} MiB): over a quarter of the memory available")
            return False
        return True

    def processor(self) -> Processor:
        """Images at ``image_size`` with ``mean``/``std``, or for text manifests the tokenizer
        (fitted on the training split, or a checkpoint's) and ``max_length``."""
        if self.input_column() == TEXT_COLUMN:
            return TextProcessor(self.text_tokenizer(), self.max_length)
        return ImageProcessor(size=list(self.image_size), mean=list(self.mean), std=list(self.std))

    def use_processor(self, processor: Processor) -> None:
        """Serve a checkpoint's model: a text model's tokenizer and length are used as saved
        (never refitted on this data); an image model's size must equal ``data.image_size``."""
        self.served_input = TEXT_COLUMN if isinstance(processor, TextProcessor) else IMAGE_COLUMN
        self.splits = {}
        if not isinstance(processor, TextProcessor):
            super().use_processor(processor)
            return
        if processor.tokenizer is None:
            raise ConfigError("the checkpoint's model reads token ids and has no tokenizer for a text manifest")
        self.tokenizer = processor.tokenizer
        self.max_length = processor.max_length
