"""Hugging Face datasets as a data source: ``data=hf``.

A split of a dataset (a hub name, a folder written by ``save_to_disk``, a folder of Parquet,
CSV or JSON files, an ``imagefolder``, or one data file) becomes the same cells a manifest has
(:mod:`mhc.data.manifest`), so the tasks are inferred, the labels checked and the errors worded
as for manifests; the images stay in the dataset's Arrow files and are decoded when read.

* The input is the one ``Image`` column, else a ``text`` column (``image_column`` /
  ``text_column`` name another).
* The tasks are the ``ClassLabel`` and ``List(ClassLabel)`` columns, with their classes in the
  feature's order, plus the columns ``tasks`` declares (``tasks.<name>.column`` when the column
  has another name). A ``List`` column is a multilabel task (an empty list: no class).
* A missing label is ``None``, or ``missing_value`` (default ``-1``, what ``ClassLabel`` datasets
  use for unlabelled rows); ``<task>__allowed`` (or ``tasks.<name>.allowed_column``) holds the
  classes a row may take, as names or class indices.

Messages name the dataset and split as ``<path>[<split>]``, then the row and column.

With ``streaming=True`` the splits are read as they stream (``load_dataset(..., streaming=True)``:
a hub dataset larger than the disk is never downloaded whole), a block of rows at a time through
the same conversion; the tasks and a fitted tokenizer come from the first ``stream_head`` rows
(class-label features give every class), training rows are shuffled within ``shuffle_buffer``
rows, and under DDP each process reads every other row (``split_dataset_by_node``), padded to
the same number of batches where the split's size is known. A streamed run does not resume
mid-epoch and reads in the training process: for both, write the data as shards (``mhc-shard
data=hf data.streaming=true``) and train with ``data=shards``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from mhc.data.datamodule import check_count, processes
from mhc.data.labels import collate, sample_of, unlabelled
from mhc.data.manifest import (
    ALLOWED_SUFFIX,
    IMAGE_COLUMN,
    TEXT_COLUMN,
    Manifest,
    ManifestDataModule,
    ManifestDataset,
    _plain,
    encode_labels,
)
from mhc.errors import ConfigError, DataError
from mhc.tasks import TaskSpec

log = logging.getLogger(__name__)
SOURCE_OPTIONS = ("column", "allowed_column")  # data.tasks options about the dataset, not the task
DATA_FILES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


class MissingSplit(DataError):
    """The dataset has no split of that name."""


def require_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("data=hf needs the Hugging Face datasets library: pip install 'mhc[hf]'") from None
    return datasets


SAVED_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")  # a save_to_disk folder holds one


@contextmanager
def reading(where: str, doing: str) -> Iterator[None]:
    """Any failure inside as one :class:`DataError` naming the dataset and split (a split the
    dataset lacks: :class:`MissingSplit`)."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds (DatasetNotFoundError, ValueError, OSError, ...)
        detail = " ".join(str(err).split())[:300]
        kind = MissingSplit if "Unknown split" in str(err) or "Bad split" in str(err) else DataError
        raise kind(f"{where}: could not {doing} the split ({type(err).__name__}: {detail})") from None


def file_builder(local: Path, where: str) -> str:
    """The ``load_dataset`` builder of one data file (``parquet``, ``csv``, ``json``, ``arrow``)."""
    builder = DATA_FILES.get(local.suffix.lower())
    if builder is None:
        raise DataError(f"{where}: cannot read a '{local.suffix}' file; expected one of {sorted(DATA_FILES)}")
    return builder


def load_split(path: str, split: str, name: str | None = None, revision: str | None = None) -> Any:
    """One split of a dataset as a ``datasets.Dataset``: a ``save_to_disk`` folder, a data file,
    or anything ``load_dataset`` reads (a hub name, a folder of data files, an image folder). A
    failure is one :class:`DataError` naming the dataset and split."""
    datasets = require_datasets()
    where = f"{path}[{split}]"
    local = Path(path).expanduser()
    with reading(where, "load"):
        if local.is_dir() and any((local / f).is_file() for f in SAVED_FILES):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise MissingSplit(f"{where}: the dataset has no split '{split}'; its splits are {list(loaded)}")
                return loaded[split]
            if split != "train":
                raise MissingSplit(f"{where}: '{path}' holds one dataset without splits; use it as data.train_split=train only")
            return loaded
        if local.is_file():
            return datasets.load_dataset(file_builder(local, where), data_files={split: str(local)}, split=split)
        return datasets.load_dataset(path, name, split=split, revision=revision)


def load_stream(path: str, split: str, name: str | None = None, revision: str | None = None) -> tuple[Any, int | None]:
    """One split as a ``datasets.IterableDataset`` read as it streams, and its number of rows
    where the dataset records it (``None`` if not). A failure is one :class:`DataError`."""
    datasets = require_datasets()
    where = f"{path}[{split}]"
    local = Path(path).expanduser()
    if local.is_dir() and any((local / f).is_file() for f in SAVED_FILES):
        data = load_split(path, split, name, revision)
        return data.to_iterable_dataset(num_shards=max(1, min(64, len(data) // 1000))), len(data)
    with reading(where, "stream"):
        if local.is_file():
            stream = datasets.load_dataset(file_builder(local, where), data_files={split: str(local)}, split=split, streaming=True)
        else:
            stream = datasets.load_dataset(path, name, split=split, revision=revision, streaming=True)
    splits = getattr(stream.info, "splits", None) or {}
    known = splits.get(split) if hasattr(splits, "get") else None
    return stream, (int(known.num_examples) if known is not None and known.num_examples else None)


def class_names(feature: Any) -> list[str] | None:
    """The class names of a ``ClassLabel`` feature, or of the ``ClassLabel`` inside a list feature."""
    inner = getattr(feature, "feature", None)
    names = getattr(inner if inner is not None else feature, "names", None)
    return [str(n) for n in names] if names else None


def is_list(feature: Any) -> bool:
    return type(feature).__name__ in ("List", "LargeList", "Sequence")


def label_cell(value: Any, names: list[str] | None, multi: bool, missing: Any, where: str) -> str:
    """A label as a manifest cell: a class name, ``a|b`` for a list (``-`` for an empty one; a
    string already written so passes as it is), or ``""`` when missing; class indices become names."""
    if value is None or (missing is not None and not isinstance(value, (list, tuple)) and value == missing):
        return ""
    if multi and isinstance(value, str):  # a manifest-style cell: "a|b", "-" for no class
        return value.strip()
    if multi or isinstance(value, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: expected a list of classes (or 'a|b'), got {value!r}")
        parts = [label_cell(v, names, False, None, where) for v in value if v is not None]
        return "|".join(parts) if parts else "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if names is not None and isinstance(value, int):
        if not 0 <= value < len(names):
            raise DataError(f"{where}: class index {value} is outside the {len(names)} classes {names}")
        return names[value]
    return str(value).strip()


def image_names(data: Any, column: str) -> list[str | None]:
    """Each row's image as predictions name it: its stored path, where the dataset keeps one.
    Read from the Arrow column without its image bytes."""
    import pyarrow.compute as pc
    import pyarrow.types as types

    stored = data.with_format("arrow")[column]
    if types.is_struct(stored.type):
        return pc.struct_field(stored, "path").to_pylist()
    if types.is_string(stored.type) or types.is_large_string(stored.type):
        return stored.to_pylist()
    return [None] * len(data)


class HFImages(Sequence):
    """A split's images as the image reader takes them (a file object of the stored bytes, or the
    stored path), read from the Arrow table one row at a time."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset.select_columns([column]), column  # rows of that column alone

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        value = self.dataset[int(index)][self.column]
        if isinstance(value, dict):
            if value.get("bytes"):
                return io.BytesIO(value["bytes"])
            if value.get("path"):
                return value["path"]
        if isinstance(value, str) and value:
            return value
        raise DataError(f"no image stored (got {type(value).__name__})")


class StreamedSplit(torch.utils.data.IterableDataset):
    """A streamed split's samples, converted a block of rows at a time by the same code as a loaded
    split's (labels checked, errors naming the row). Under DDP each process takes every
    ``world``-th row and, where the split's size is known, pads its share with unlabelled
    samples to the largest share, so every process runs the same number of batches."""

    def __init__(self, module: "HFDataModule", split: str, labelled: bool, shuffle: bool, block: int = 256) -> None:
        self.module, self.split, self.labelled, self.shuffle, self.block = module, split, labelled, shuffle, block
        self.stream, self.rows = module.stream(split)
        self.tasks = module.active_tasks()
        self.epoch = 0

    def __len__(self) -> int:
        if self.rows is None:
            raise TypeError("the stream's length is unknown")
        world, _ = processes()
        return math.ceil(self.rows / world)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from datasets.distributed import split_dataset_by_node

        stream, (world, rank) = self.stream, processes()
        if self.shuffle:
            stream = stream.shuffle(seed=self.module.seed, buffer_size=self.module.shuffle_buffer)
            stream.set_epoch(self.epoch)
            self.epoch += 1
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world, strategy="examples")  # every world-th row
        given, last = 0, None
        for first, rows in self.blocks(stream):
            for last in self.samples(rows, first * world + rank):
                given += 1
                yield last
        if self.rows is not None and world > 1 and last is not None:
            for _ in range(math.ceil(self.rows / world) - given):  # filler: the same number of batches everywhere
                yield unlabelled(last)

    def blocks(self, stream: Any) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(the index of its first row in this process's stream, a block of up to ``block`` rows)."""
        rows: list[dict[str, Any]] = []
        first = 0
        for row in stream:
            rows.append(row)
            if len(rows) == self.block:
                yield first, rows
                first, rows = first + len(rows), []
        if rows:
            yield first, rows

    def samples(self, rows: list[dict[str, Any]], first_row: int) -> Iterator[dict[str, Any]]:
        data = require_datasets().Dataset.from_list(rows, features=self.stream.features)
        manifest = self.module.to_manifest(self.split, labelled=self.labelled, data=data, first_row=first_row)
        if self.shuffle:  # rows are numbered as read: a message says so
            manifest = dataclasses.replace(manifest, source=f"{manifest.source} (shuffled stream, rows as read)")
        dataset = self.module.dataset(self.split, manifest, self.tasks, labelled=self.labelled, data=data)
        batch = dataset.gather(range(len(rows)))
        for i in range(len(rows)):
            yield sample_of(batch, i)


class HFDataModule(ManifestDataModule):
    """Train/val/test/predict splits from a Hugging Face dataset (see the module docs).

    Args:
        path: a hub name, a local folder (``save_to_disk``, data files, an image folder) or a data file.
        name: the dataset's configuration (``load_dataset(path, name)``).
        revision: a hub revision (branch, tag or commit).
        train_split, val_split, test_split, predict_split: split names (``load_dataset`` slices
            such as ``train[:90%]`` work); ``None`` leaves a split out.
        image_column, text_column: the input column (default: the ``Image`` column, else ``text``).
        tasks: task name -> :class:`~mhc.tasks.TaskSpec` fields, plus ``column`` (the dataset
            column, default the task name) and ``allowed_column``.
        missing_value: a label value that means "missing" besides ``None`` (``null``: none).
        streaming: read the splits as they stream (``load_dataset(..., streaming=True)``) instead
            of loading them: the tasks' classes come from the class-label features, or else from
            the first ``stream_head`` training rows, which also fit the tokenizer.
        stream_head: rows read ahead to infer tasks and fit a tokenizer when streaming.
        shuffle_buffer: streamed training rows are shuffled within a buffer of this many rows.
        seed: the streamed shuffle's seed (each epoch draws another order).
        **options: :class:`~mhc.data.manifest.ManifestDataModule` options (``image_size``,
            ``tokenizer``, ``cache``, ``batch_size``, ...).
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        revision: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "validation",
        test_split: str | None = "test",
        predict_split: str | None = None,
        image_column: str | None = None,
        text_column: str | None = None,
        tasks: Mapping[str, Mapping[str, Any]] | None = None,
        missing_value: Any = -1,
        streaming: bool = False,
        stream_head: int = 10_000,
        shuffle_buffer: int = 10_000,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if streaming and options.get("num_workers") not in (None, 0, "auto"):
            raise ConfigError("data.streaming=true reads in the training process (data.num_workers=0); "
                              "for parallel reading write the data as shards (mhc-shard) and use data=shards")
        if streaming:
            options["num_workers"] = 0
        if not path:
            raise ConfigError("data.path: the dataset to read (a hub name, a local folder or a data file)")
        declared = _plain(tasks) or {}
        if not isinstance(declared, Mapping) or not all(isinstance(o, Mapping) or o is None for o in declared.values()):
            raise ConfigError(f"data.tasks must map task names to options, e.g. {{tags: {{column: labels}}}}; got {declared!r}")
        self.sources = {name: {k: (o or {})[k] for k in SOURCE_OPTIONS if k in (o or {})} for name, o in declared.items()}
        spec_options = {name: {k: v for k, v in (o or {}).items() if k not in SOURCE_OPTIONS} for name, o in declared.items()}
        super().__init__(train=train_split, val=val_split, test=test_split, predict=predict_split, tasks=spec_options, **options)
        self.path, self.config_name, self.revision = str(path), name, revision  # `name`: the dataset's configuration
        self.image_column, self.text_column = image_column, text_column
        self.missing_value = missing_value
        self.loaded: dict[str, Any] = {}
        self.streaming = bool(streaming)
        self.stream_head = check_count("stream_head", stream_head, minimum=1)
        self.shuffle_buffer = check_count("shuffle_buffer", shuffle_buffer, minimum=1)
        self.streams: dict[str, tuple[Any, int | None]] = {}
        self.seed = int(seed)

    # -- the dataset's splits as manifests -------------------------------------------------------
    def split_data(self, split: str) -> Any:
        """The ``datasets.Dataset`` of ``split``, loaded once; when streaming, its first
        ``stream_head`` rows (what tasks and the tokenizer are inferred from)."""
        if split not in self.loaded:
            if self.streaming:
                stream, _ = self.stream(split)
                self.loaded[split] = require_datasets().Dataset.from_list(list(stream.take(self.stream_head)),
                                                                          features=stream.features)
            else:
                self.loaded[split] = load_split(self.path, str(self._path(split)), self.config_name, self.revision)
        return self.loaded[split]

    def stream(self, split: str) -> tuple[Any, int | None]:
        """The split as a stream, and its number of rows where known."""
        if split not in self.streams:
            self.streams[split] = load_stream(self.path, str(self._path(split)), self.config_name, self.revision)
        return self.streams[split]

    def has_split(self, split: str) -> bool:
        """Whether ``split`` is set and the dataset has it (a default split name it lacks, such as
        ``test``, is left out with a message instead of failing the run at its end)."""
        if self.files.get(split) is None:
            return False
        try:
            self.split_data(split)
        except MissingSplit as err:
            log.warning(f"{err}; the {split} split is left out")
            self.files[split] = None
            return False
        return True

    def _path(self, split: str) -> str | Path:
        name = self.files.get(split)
        if name is None:
            raise DataError(f"{self.path}: no {split} split; set data.{split}_split=<split name>")
        return name

    def source(self, split: str) -> str:
        return f"{self.path}[{self._path(split)}]"

    def input_source(self, data: Any, split: str) -> tuple[str, str]:
        """(dataset column, ``image`` or ``text``) of the samples' input."""
        if self.image_column:
            self.check_column(data, self.image_column, split, "data.image_column")
            return self.image_column, IMAGE_COLUMN
        if self.text_column:
            self.check_column(data, self.text_column, split, "data.text_column")
            return self.text_column, TEXT_COLUMN
        images = [c for c, f in data.features.items() if type(f).__name__ == "Image"]
        if len(images) == 1:
            return images[0], IMAGE_COLUMN
        if TEXT_COLUMN in data.column_names:
            return TEXT_COLUMN, TEXT_COLUMN
        found = f"image columns {images}" if images else f"no Image column and no 'text' column (the columns are {data.column_names})"
        raise DataError(f"{self.source(split)}: {found}; set data.image_column or data.text_column")

    def check_column(self, data: Any, column: str, split: str, option: str) -> None:
        if column not in data.column_names:
            raise DataError(f"{self.source(split)}: {option} names column '{column}', which the split does not have; "
                            f"its columns are {data.column_names}")

    def task_columns(self, data: Any) -> dict[str, str]:
        """Task name -> dataset column: the declared tasks, and every class-label column."""
        columns = {name: str(src.get("column", name)) for name, src in self.sources.items()}
        taken = set(columns.values())
        for column, feature in data.features.items():
            if column not in taken and column not in self.ignore_columns and class_names(feature) is not None:
                columns[column] = column
        return {name: col for name, col in columns.items() if name not in self.ignore_columns}

    def to_manifest(self, split: str, labelled: bool = True, data: Any = None, first_row: int = 0) -> Manifest:
        """A split's cells (or those of ``data``, its rows from ``first_row`` on): the input column
        and one text column per task (and per allowed set)."""
        source = self.source(split)
        data = self.split_data(split) if data is None else data
        if len(data) == 0:
            raise DataError(f"{source}: the split has no rows")
        column, kind = self.input_source(data, split)
        tasks = self.task_columns(data)
        if labelled and split != "predict" and not tasks:
            raise DataError(f"{source}: no task columns: no ClassLabel column, and data.tasks declares none "
                            f"(the columns are {data.column_names})")
        cells: dict[str, list[str]] = {}
        if kind == TEXT_COLUMN:
            cells[TEXT_COLUMN] = ["" if t is None else str(t).strip() for t in data[column]]
        else:
            cells[IMAGE_COLUMN] = [p or f"{source}: row {first_row + i + 1}" for i, p in enumerate(image_names(data, column))]
        for name, task_column in tasks.items():
            if task_column not in data.column_names:
                if split == "predict" or not labelled:
                    continue
                self.check_column(data, task_column, split, f"data.tasks.{name}.column")
            cells[name] = self.label_cells(data, task_column, source, first_row)
            allowed = self.sources.get(name, {}).get("allowed_column", f"{name}{ALLOWED_SUFFIX}")
            if allowed in data.column_names:
                names = class_names(data.features[task_column])
                cells[f"{name}{ALLOWED_SUFFIX}"] = [label_cell(v, names, True, None, f"{source}: row {first_row + i + 1}, column '{allowed}'")
                                                    for i, v in enumerate(data[allowed])]
        return Manifest(source, Path("."), cells, first_row=first_row)

    def label_cells(self, data: Any, column: str, source: str, first_row: int = 0) -> list[str]:
        feature = data.features[column]
        names, multi = class_names(feature), is_list(feature)
        return [label_cell(v, names, multi, self.missing_value, f"{source}: row {first_row + i + 1}, column '{column}'")
                for i, v in enumerate(data[column])]

    def build_split(self, split: str) -> Any:
        if not self.streaming:
            return super().build_split(split)
        if split != "train" and not self.has_split(split):
            raise DataError(f"{self.path}: no {split} split; set data.{split}_split=<split name>")
        self.input_column()  # the input kind, from the stream's head
        return StreamedSplit(self, split, labelled=split != "predict" and bool(self.active_tasks()), shuffle=False)

    def loader(self, split: str, shuffle: bool = False, shard: bool = True) -> Any:
        if not self.streaming:
            return super().loader(split, shuffle, shard)
        if split not in self.splits:
            self.setup(split)
        if self.balance:
            raise ConfigError("data.balance draws samples by class and cannot with data.streaming=true")
        dataset = self.splits[split]
        if shuffle:  # the training loader's own copy, shuffled anew each epoch
            dataset = copy.copy(dataset)
            dataset.shuffle = True
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size if shuffle else self.eval_batch_size,
                                           num_workers=0, pin_memory=self.pin_memory, collate_fn=collate)

    def predict_inputs(self) -> tuple[str, list[str]]:
        if not self.streaming:
            return super().predict_inputs()
        column, kind = self.input_source(self.split_data("predict"), "predict")
        stream, _ = self.stream("predict")
        if kind == IMAGE_COLUMN and type(stream.features[column]).__name__ == "Image":
            stream = stream.cast_column(column, type(stream.features[column])(decode=False))
        names = []
        for index, row in enumerate(stream):
            value = row[column]
            name = value.get("path") if isinstance(value, dict) else value
            names.append(str(name).strip() if name else f"{self.source('predict')}: row {index + 1}")
        return kind, names

    # -- what the manifest module asks for -------------------------------------------------------
    @cached_property
    def train_manifest(self) -> Manifest:
        """The training split's cells, read once: tasks are inferred from them."""
        return self.to_manifest("train")

    def manifest(self, split: str) -> Manifest:
        return self.train_manifest if split == "train" else self.to_manifest(split, labelled=split != "predict")

    def train_labels(self, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
        """When streaming, the labels of the stream's first ``stream_head`` rows (the stream is
        read by the epochs, not for a profile)."""
        if not self.streaming:
            return super().train_labels(tasks)
        return {task.name: encode_labels(self.train_manifest, task) for task in tasks}

    def task_specs(self) -> list[TaskSpec]:
        """The training split's tasks; a class-label column's classes keep the feature's order."""
        data = self.split_data("train")
        for name, column in self.task_columns(data).items():
            names = class_names(data.features[column]) if column in data.column_names else None
            options = self.declared.setdefault(name, {})
            if names is not None and "classes" not in options:
                options["classes"] = names
                options.setdefault("kind", "multilabel" if is_list(data.features[column]) else "multiclass")
        return super().task_specs()

    def dataset(self, split: str, manifest: Manifest, tasks: Sequence[TaskSpec], labelled: bool,
                data: Any = None) -> ManifestDataset:
        images = None
        if manifest.input_column == IMAGE_COLUMN:
            data = self.split_data(split) if data is None else data
            column, _ = self.input_source(data, split)
            feature = data.features[column]
            stored = data.cast_column(column, type(feature)(decode=False)) if type(feature).__name__ == "Image" else data
            images = HFImages(stored, column)
        return ManifestDataset(manifest, tasks, self.processor(), labelled=labelled, images=images)
