"""Sharded, streamed data: ``mhc-shard`` writes any data source as shards, ``data=shards`` streams them.

Shards are litdata's chunks (written by its ``BinaryWriter``), read by its ``StreamingDataset``
from a local folder or object storage (``s3://``, ``gs://``, ``azure://``) through a bounded
local cache, so memory and disk stay constant whatever the data's size. litdata was chosen over
WebDataset tars after measuring both (docs/benchmarks.md, "Shard formats": 3.2x faster reads,
2.6x less disk), and it already has what training at scale needs, which tars would need written
around them: each DDP process (and each loader worker) reads its own chunks by rule, a shuffle
of chunks and of samples within a window, and a loader state that restores its position
mid-epoch (saved in checkpoints with the data module's state).

A shard folder holds one sub-folder per split and ``mhc_shards.json``, the description: the
tasks with their classes, the processor (image size and normalisation, or the fitted tokenizer)
and each split's sample count. Each sample is stored ready to batch::

    {"row": int,                 # the sample's row in its source split
     "name": str,                # what predictions name it: the image path, the text, "row N"
     "image": bytes,             # PNG or JPEG at the data's image size (or raw 8-bit pixels)
     # or "tokens": int32 [max_length], already encoded by the saved tokenizer
     "labels": {task: int | int8 [C]},   # class index, 0/1, or 0/1 per class; -1: missing
     "allowed": {task: uint8 [C]}}       # only tasks with data-given output masks

Under DDP every process runs the same number of batches (collectives need it), while every
sample is read exactly once an epoch: a process with fewer samples ends its epoch with filler
batches whose labels are all masked, so they add nothing to losses or metrics (see
:class:`EvenBatches`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mhc.data.augment import Augmentation
from mhc.data.datamodule import SPLITS, TaskDataModule, check_count, check_image_size, processes, trained_batches
from mhc.data.labels import collate, unlabelled
from mhc.data.manifest import _plain
from mhc.errors import CheckpointError, ConfigError, DataError
from mhc.processing.processors import ImageProcessor, Processor, TextProcessor, processor_from_dict
from mhc.tasks import TaskSpec, tasks_from_dicts, tasks_to_dicts

log = logging.getLogger(__name__)

DESCRIPTION = "mhc_shards.json"
FORMAT, VERSION = "mhc-shards", 1
IMAGE_FORMATS = ("png", "jpeg", "raw")
MAX_DESCRIPTION_BYTES = 64 << 20  # a larger description file is refused before it is read
REMOTE = ("s3://", "gs://", "azure://", "hf://")


def require_litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise ConfigError("sharded data needs litdata: pip install 'mhc[shards]'") from None
    quiet = logging.getLogger("litdata")
    if quiet.level == logging.NOTSET:  # its per-dataset notes (cache size, memory mapping) only on request
        quiet.setLevel(logging.WARNING)
    return litdata


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE)


def split_dir(root: str, split: str) -> str:
    return f"{str(root).rstrip('/')}/{split}"


# -- writing ---------------------------------------------------------------------------------


def stored_labels(tasks: Sequence[TaskSpec], batch: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Row ``row`` of a collated batch's targets as stored: class index or 0/1 (``-1``: missing),
    or 0/1 per class (all ``-1``: missing)."""
    labels: dict[str, Any] = {}
    for task in tasks:
        present = bool(batch["label_mask"][task.name][row])
        target = batch["targets"][task.name][row]
        if task.kind == "multilabel":
            labels[task.name] = target.numpy().astype(np.int8) if present else np.full(task.num_classes, -1, np.int8)
        else:
            labels[task.name] = int(target) if present else -1
    return labels


def encode_image(pixels: Tensor, image_format: str, quality: int) -> bytes:
    """Float ``[3, H, W]`` in [0, 1] -> PNG, JPEG or raw 8-bit bytes."""
    from torchvision.io import encode_jpeg, encode_png

    data = pixels.mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()
    if image_format == "raw":
        return data.numpy().tobytes()
    encoded = encode_png(data, compression_level=6) if image_format == "png" else encode_jpeg(data, quality=quality)
    return encoded.numpy().tobytes()


class SampleWriter:
    """A range of a split's rows -> the stored samples (see the module docs)."""

    def __init__(self, dataset: Dataset, tasks: Sequence[TaskSpec], image_format: str, quality: int) -> None:
        self.dataset, self.tasks = dataset, list(tasks)
        self.image_format, self.quality = image_format, quality

    def __call__(self, rows: tuple[int, int]) -> list[dict[str, Any]]:
        start, stop = rows
        indices = list(range(start, stop))
        gather = getattr(self.dataset, "gather", None)
        batch = gather(indices) if callable(gather) else collate([self.dataset[i] for i in indices])
        return self.samples(batch, indices, getattr(self.dataset, "inputs", None))

    def samples(self, batch: Mapping[str, Any], indices: Sequence[int], names: Sequence[Any] | None) -> list[dict[str, Any]]:
        """The stored samples of a collated ``batch`` of the rows ``indices``."""
        samples = []
        for offset, row in enumerate(indices):
            sample: dict[str, Any] = {"row": row, "name": str(names[row]) if names is not None else f"row {row + 1}"}
            if "tokens" in batch:
                sample["tokens"] = batch["tokens"][offset].numpy().astype(np.int32)
            else:
                sample["image"] = encode_image(batch["image"][offset], self.image_format, self.quality)
            sample["labels"] = stored_labels(self.tasks, batch, offset)
            if batch.get("allowed"):
                sample["allowed"] = {t: m[offset].numpy().astype(np.uint8) for t, m in batch["allowed"].items()}
            samples.append(sample)
        return samples


def write_split(dataset: Dataset, tasks: Sequence[TaskSpec], folder: Path, image_format: str, quality: int,
                chunk_bytes: str, threads: int, rows_per_task: int = 256) -> int:
    """One split's samples as litdata chunks in ``folder``, in row order; returns the count. Rows
    are read and encoded in ``threads`` threads (decoders and encoders release the GIL)."""
    from litdata.streaming.writer import BinaryWriter

    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    encode = SampleWriter(dataset, tasks, image_format, quality)
    if isinstance(dataset, IterableDataset):  # a stream (data=hf data.streaming=true): read in order as it comes
        batches = counted(DataLoader(dataset, batch_size=rows_per_task, collate_fn=collate))
        blocks = (encode.samples(batch, range(start, start + len(next(iter(batch["label_mask"].values())))), None)
                  for start, batch in batches)
        index = write_items(writer, blocks)
    else:
        size = len(dataset)  # type: ignore[arg-type]
        ranges = [(start, min(size, start + rows_per_task)) for start in range(0, size, rows_per_task)]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            index = write_items(writer, pool.map(encode, ranges))  # in order
    if index == 0:
        raise DataError(f"{getattr(dataset, 'source', 'the split')}: the split has no samples")
    writer.done()
    writer.merge()
    return index


def counted(batches: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(the row of each batch's first sample, the batch)."""
    start = 0
    for batch in batches:
        yield start, batch
        start += len(next(iter(batch["label_mask"].values())))


def write_items(writer: Any, blocks: Iterable[list[dict[str, Any]]]) -> int:
    index = 0
    for samples in blocks:
        for sample in samples:
            writer.add_item(index, sample)
            index += 1
    return index


def describe(tasks: Sequence[TaskSpec], processor: Processor, image_format: str, counts: Mapping[str, int]) -> dict[str, Any]:
    """The description ``mhc_shards.json`` holds (what :func:`read_description` checks)."""
    return {
        "format": FORMAT, "version": VERSION, "tasks": tasks_to_dicts(tasks), "processor": processor.to_dict(),
        "image_format": None if isinstance(processor, TextProcessor) else image_format,
        "splits": {split: {"samples": count} for split, count in counts.items()},
    }


def write_shards(
    datamodule: TaskDataModule,
    output: str | Path,
    splits: Sequence[str] = ("train", "val", "test"),
    image_format: str = "png",
    quality: int = 95,
    chunk_bytes: str = "64MB",
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``datamodule``'s ``splits`` as shards under ``output`` (a local folder), reading and
    encoding in ``workers`` threads, and return the description written to
    ``output/mhc_shards.json``. Splits the data does not have are left out; the training split
    is required. Images are stored at the data's image size. The folder appears only when every
    split is written (a killed run leaves a hidden staging folder, removed by the next one)."""
    require_litdata()
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality must be an integer from 1 to 100 (JPEG), got {quality!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"splits: unknown split(s) {unknown}; expected some of {list(SPLITS)}")
    if "train" not in splits:
        raise ConfigError("splits must include train: the shards' tasks and processor come from it")
    root = Path(output).expanduser().absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise ConfigError(f"output {root} exists and is not an empty folder; choose a new folder or set overwrite=true")
        if not (root / DESCRIPTION).is_file():
            raise ConfigError(f"output {root} holds files that are not shards; overwrite=true only replaces shards")
    tasks = datamodule.active_tasks()
    processor = datamodule.processor()
    staging = root.with_name(f".{root.name}.writing")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    try:
        for split in splits:
            if split == "train" or datamodule.has_split(split):
                counts[split] = write_split(datamodule.build_split(split), tasks, staging / split, image_format,
                                            quality, chunk_bytes, workers)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    description = describe(tasks, processor, image_format, counts)
    (staging / DESCRIPTION).write_text(json.dumps(description, indent=2))
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return description


# -- reading ---------------------------------------------------------------------------------


def read_text(path: str) -> str:
    """A small text file from a local path or an object store URL (litdata's ``obstore``)."""
    if not is_remote(path):
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"{path}: not found (the shard folder's description {DESCRIPTION}; write shards with mhc-shard)")
        if file.stat().st_size > MAX_DESCRIPTION_BYTES:
            raise DataError(f"{path}: {file.stat().st_size} bytes, over the {MAX_DESCRIPTION_BYTES} a description may take")
        return file.read_text()
    import obstore
    from obstore.store import from_url

    folder, name = path.rsplit("/", 1)
    try:
        store = from_url(folder)
        size = obstore.head(store, name)["size"]
        if size > MAX_DESCRIPTION_BYTES:
            raise DataError(f"{path}: {size} bytes, over the {MAX_DESCRIPTION_BYTES} a description may take")
        return bytes(obstore.get(store, name).bytes()).decode()
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - object stores raise their own kinds
        raise DataError(f"{path}: could not read ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None


def read_description(root: str) -> dict[str, Any]:
    """A shard folder's description, checked before anything it names is opened; a bad one is a
    :class:`DataError` naming the file and the field."""
    path = f"{str(root).rstrip('/')}/{DESCRIPTION}"
    try:
        description = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise DataError(f"{path}: not an mhc shard description (expected \"format\": \"{FORMAT}\")")
    if description.get("version") != VERSION:
        raise DataError(f"{path}: shard format version {description.get('version')!r}; this mhc reads version {VERSION}")
    splits = description.get("splits")
    if not isinstance(splits, dict) or not splits or not all(
        s in SPLITS and isinstance(v, dict) and isinstance(v.get("samples"), int) and v["samples"] > 0 for s, v in splits.items()
    ):
        raise DataError(f"{path}: \"splits\" must map split names {list(SPLITS)} to {{\"samples\": <positive count>}}")
    if description.get("image_format") not in (*IMAGE_FORMATS, None):
        raise DataError(f"{path}: \"image_format\" must be one of {list(IMAGE_FORMATS)}, got {description.get('image_format')!r}")
    tasks = description.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path}: \"tasks\" must be a non-empty list of task descriptions")
    try:
        description["tasks"] = tasks_from_dicts(tasks)
    except (ConfigError, TypeError, ValueError) as err:
        raise DataError(f"{path}: bad \"tasks\" ({err})") from None
    try:
        description["processor"] = processor_from_dict(description.get("processor"), path)
    except CheckpointError as err:
        raise DataError(str(err)) from None
    if isinstance(description["processor"], ImageProcessor) == (description["image_format"] is None):
        raise DataError(f"{path}: \"image_format\" must be set for image shards and null for token shards")
    return description


class SampleDecoder:
    """A stored sample -> the sample format of :mod:`mhc.data.labels` (plus its ``row``), for the
    tasks being trained: the stored ones, with the config's options."""

    def __init__(self, tasks: Sequence[TaskSpec], processor: Processor, image_format: str | None,
                 augmentation: Augmentation | None = None) -> None:
        self.tasks, self.processor, self.image_format = list(tasks), processor, image_format
        self.augmentation = augmentation  # training images, augmented in the loader's workers
        self.pixels = augmentation.pixels(processor.size) if augmentation is not None else None  # type: ignore[attr-defined]

    def image(self, data: Any) -> Tensor:
        from torchvision.io import ImageReadMode, decode_image

        size = self.processor.size  # type: ignore[attr-defined]
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels = raw.view(3, *size) if self.image_format == "raw" else decode_image(raw, mode=ImageReadMode.RGB)
        image = pixels.float().div_(255)
        return self.processor.resize(image) if tuple(image.shape[-2:]) != tuple(size) else image  # type: ignore[attr-defined]

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        sample: dict[str, Any] = {"row": torch.tensor(int(item["row"]))}
        if "tokens" in item:
            sample["tokens"] = torch.as_tensor(np.asarray(item["tokens"]), dtype=torch.long)
        else:
            sample["image"] = self.image(item["image"])
        targets, mask = {}, {}
        for task in self.tasks:
            value = item["labels"][task.name]
            if task.kind == "multilabel":
                row = torch.as_tensor(np.asarray(value), dtype=torch.float32)
                mask[task.name] = torch.tensor(bool(row[0] >= 0))
                targets[task.name] = row.clamp(min=0)
            else:
                mask[task.name] = torch.tensor(int(value) >= 0)
                dtype = torch.long if task.kind == "multiclass" else torch.float32
                targets[task.name] = torch.tensor(max(int(value), 0), dtype=dtype)
        sample["targets"], sample["label_mask"] = targets, mask
        allowed = item.get("allowed") or {}
        if allowed:
            sample["allowed"] = {name: torch.as_tensor(np.asarray(m)).bool() for name, m in allowed.items()}
        if self.augmentation is not None:
            sample = self.augmentation.flip(sample)
            sample["image"] = self.pixels(sample["image"])
        return sample


class EvenBatches:
    """A litdata ``StreamingDataLoader`` whose epochs have the same number of batches in every
    DDP process: litdata gives each process its own samples (all of them once an epoch, with
    ``drop_last=False``) but not always the same number of them; a process that runs out first
    ends its epoch with unlabelled filler batches.

    Its :meth:`position` after a number of batches (the loader's state after them) restores it
    there (:meth:`restore`), so a run resumes mid-epoch. Lightning's loop fetches a batch ahead
    of the step it runs, so the loader's own state is a batch ahead of the training: the state
    after each of the last few batches is kept and the one of the trained batches is saved.
    """

    def __init__(self, loader: Any, batches: int) -> None:
        self.loader, self.batches = loader, batches
        self.given = 0  # batches given so far this epoch
        self.restored = 0  # batches an interrupted epoch had trained, where iteration resumes
        # (batches given, the loader's state after them, whether they were this process's last)
        self.states: deque[tuple[int, Any, bool]] = deque(maxlen=4)
        self.running = False  # inside an epoch
        self.exhausted = False  # restored after this process's last sample of the epoch: filler is left

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Any]:
        last = None
        self.given, self.restored, self.running = self.restored, 0, True
        self.states.clear()
        # The loader's next batch is read before one is given: Lightning stops asking after the
        # epoch's last batch, and litdata ends its epoch only when asked once more.
        batches = iter(()) if self.exhausted else iter(self.loader)
        self.exhausted = False
        batch = next(batches, None)
        while batch is not None:
            if self.given >= self.batches:
                raise RuntimeError(f"the shard loader gave more than the {self.batches} batches expected this epoch")
            self.given += 1
            state = self.loader.state_dict()
            last, batch = batch, next(batches, None)
            self.states.append((self.given, state, batch is None))
            yield last
        if last is None and self.given < self.batches:  # a process without a sample left this epoch
            last = collate([self.loader.dataset[0]])
        while self.given < self.batches:
            self.given += 1
            yield unlabelled(last)
        self.running = False

    def position(self, trained: int) -> dict[str, Any]:
        """Where the epoch stands after ``trained`` of its batches: the loader's epoch, its state
        after them (``None`` between epochs), and whether this process had read all its samples."""
        epoch = int(self.loader.current_epoch)
        if not self.running or trained >= self.batches:
            return {"epoch": epoch, "trained": 0, "loader": None, "exhausted": False}
        if trained == 0:  # this epoch has begun but trained nothing: it starts over
            return {"epoch": epoch - 1, "trained": 0, "loader": None, "exhausted": False}
        kept = [(state, last) for given, state, last in self.states if given <= trained]
        if not kept:  # a process without a sample this epoch: its batches so far were filler
            return {"epoch": epoch, "trained": int(trained), "loader": None, "exhausted": True}
        state, last = kept[-1]
        return {"epoch": epoch, "trained": int(trained), "loader": None if last else state, "exhausted": last}

    def restore(self, position: Mapping[str, Any]) -> None:
        """Continue from a :meth:`position`: the rest of an interrupted epoch, or the next one."""
        self.restored = int(position["trained"])
        self.exhausted = bool(position.get("exhausted"))
        if position["loader"] is not None:
            self.loader.load_state_dict(position["loader"])
        else:  # the next epoch, or the rest of this one after this process's last sample (filler)
            self.loader.current_epoch = int(position["epoch"])


class ShardsDataModule(TaskDataModule):
    """Train/val/test/predict splits streamed from shards that ``mhc-shard`` wrote (module docs).

    Args:
        path: the shard folder: a local path or an object store URL (``s3://bucket/prefix``).
        train_split, val_split, test_split, predict_split: the split folders to read (``None``
            leaves one out; a split the shards do not have is left out with a message).
        cache_dir: where chunks of remote shards are kept while read (default: litdata's).
        cache_size: the most disk the cache of remote chunks takes (``"50GB"``).
        shuffle_window: samples shuffled together within the chunks a worker reads (``None``:
            litdata's default, a few chunks' worth).
        seed: the shuffle's seed (epochs differ: litdata adds the epoch).
        image_size: ``[height, width]`` to train at, when not the stored size (images are resized
            as they are decoded).
        **loader: :class:`TaskDataModule` options (``batch_size``, ``num_workers``, ...).
    """

    def __init__(
        self,
        path: str,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        predict_split: str | None = None,
        cache_dir: str | None = None,
        cache_size: str = "50GB",
        shuffle_window: int | None = None,
        seed: int = 0,
        image_size: Sequence[int] | None = None,
        **loader: Any,
    ) -> None:
        if loader.get("balance"):
            raise ConfigError("data.balance is not available for shards (samples are streamed, not drawn)")
        if loader.get("train_fraction", 1.0) != 1.0:
            raise ConfigError("data.train_fraction is not available for shards; write a smaller training split with mhc-shard")
        super().__init__(**loader)
        if not path:
            raise ConfigError("data.path: the shard folder mhc-shard wrote (a local path or s3://bucket/prefix)")
        require_litdata()
        self.path = str(Path(path).expanduser()) if not is_remote(str(path)) else str(path)
        self.names = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}
        self.cache_dir, self.cache_size = cache_dir, cache_size
        self.shuffle_window, self.seed = shuffle_window, int(seed)
        self.description = read_description(self.path)
        self._processor: Processor = self.description["processor"]
        if image_size is not None:
            if not isinstance(self._processor, ImageProcessor):
                raise ConfigError(f"data.image_size: the shards {self.path} hold token ids, not images")
            self._processor = dataclasses.replace(self._processor, size=check_image_size(_plain(image_size)))
        self.training_loader: EvenBatches | None = None
        self.resume_position: dict[str, Any] | None = None  # a checkpoint's, for the next training loader

    def task_specs(self) -> list[TaskSpec]:
        return list(self.description["tasks"])

    def processor(self) -> Processor:
        return self._processor

    def use_processor(self, processor: Processor) -> None:
        """Serve a checkpoint's model: the shards must hold what it reads, at its image size."""
        super().use_processor(processor)
        if isinstance(processor, TextProcessor) and processor.to_dict() != self._processor.to_dict():
            raise ConfigError(f"{self.path}: the shards' tokens were encoded with another tokenizer than the checkpoint's; "
                              "write the shards again from the checkpoint's data")

    def has_split(self, split: str) -> bool:
        name = self.names.get(split)
        if name is None:
            return False
        if name not in self.description["splits"]:
            log.warning(f"{self.path}: the shards have no '{name}' split (they have {list(self.description['splits'])}); "
                        f"the {split} split is left out")
            self.names[split] = None
            return False
        return True

    def stored_split(self, split: str) -> str:
        name = self.names.get(split)
        if name is None or name not in self.description["splits"]:
            raise DataError(f"{self.path}: no {split} split; the shards have {list(self.description['splits'])} "
                            f"(set data.{split}_split=<one of them>)")
        return name

    def check_tasks(self) -> list[TaskSpec]:
        """The tasks to train, each one the shards store with the same kind and classes."""
        stored = {t.name: t for t in self.description["tasks"]}
        tasks = self.active_tasks()
        for task in tasks:
            own = stored.get(task.name)
            if own is None:
                raise ConfigError(f"task '{task.name}' is not in the shards {self.path}; they hold {list(stored)}")
            if (own.kind, own.classes) != (task.kind, task.classes):
                raise ConfigError(f"task '{task.name}': the shards hold a {own.kind} task with classes {own.classes}, "
                                  f"not a {task.kind} task with classes {task.classes}")
        return tasks

    def build_split(self, split: str) -> Dataset:
        """The split's litdata ``StreamingDataset``, decoding samples for the tasks being trained."""
        litdata = require_litdata()
        source = split_dir(self.path, self.stored_split(split))
        augmentation = self.augmentation if split == "train" and isinstance(self._processor, ImageProcessor) else None
        if augmentation is not None and not (augmentation.active and augmentation.where == "loader"):
            augmentation = None  # none, or augment.where=device: the module augments whole batches
        decoder = SampleDecoder(self.check_tasks(), self._processor, self.description["image_format"], augmentation)
        options: dict[str, Any] = {"max_cache_size": self.cache_size}
        if self.cache_dir:
            options["cache_dir"] = str(Path(self.cache_dir).expanduser())
        if self.shuffle_window is not None:
            options["item_shuffle_window"] = check_count("shuffle_window", self.shuffle_window, minimum=1)
        try:
            dataset = litdata.StreamingDataset(source, shuffle=split == "train", drop_last=False, seed=self.seed,
                                               transform=decoder, **options)
        except Exception as err:  # noqa: BLE001 - litdata raises many kinds for a missing or damaged index
            raise DataError(f"{source}: cannot read the shards ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
        dataset.source = source  # where messages point
        return dataset

    def augmented(self, dataset: Dataset) -> Dataset:
        return dataset  # augmented as the samples are decoded (build_split)

    def loader(self, split: str, shuffle: bool = False, shard: bool = True) -> EvenBatches:
        """A litdata loader of ``split``; under DDP each process streams its own samples, in as
        many batches as every other process (:class:`EvenBatches`), unless ``shard=False``
        (every process then reads all of the split, as calibration does)."""
        if split not in self.splits:
            self.setup(split)
        dataset = self.splits[split]
        if not shard:
            dataset = alone(dataset)
        loader = self.even_loader(dataset, self.batch_size if shuffle else self.eval_batch_size)
        if split == "train" and shuffle:
            if self.resume_position is not None:
                loader.restore(self.resume_position)
                self.resume_position = None
            self.training_loader = loader
        return loader

    # -- the training loader's position in checkpoints (Lightning saves and restores it) ---------
    def state_dict(self) -> dict[str, Any]:
        """Every process's position in the training epoch, after the batches trained so far."""
        loader, trainer = self.training_loader, self.trainer
        if loader is None or trainer is None:
            return {}
        position = loader.position(trained_batches(trainer))
        positions = [position]
        world, _ = processes()
        if world > 1:
            positions = [None] * world
            dist.all_gather_object(positions, position)  # every process saves, rank 0 writes
        return {"training_positions": positions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        positions = state.get("training_positions") or []
        if not positions:
            return
        world, rank = processes()
        position = positions[rank] if len(positions) == world else {**positions[0], "loader": None}
        if len(positions) != world and positions[0].get("loader") is not None:
            log.warning(f"the checkpoint was saved by {len(positions)} processes and {world} resume it: "
                        "its interrupted epoch is left and the next one starts")
        self.resume_position = position
        self.training_loader = None

    def even_loader(self, dataset: Any, batch_size: int) -> EvenBatches:
        litdata = require_litdata()
        loader = litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                                             pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                                             collate_fn=collate)
        return EvenBatches(loader, batches_per_process(dataset, batch_size, self.num_workers))

    def predict_inputs(self) -> tuple[str, list[str]]:
        """Each predicted sample's stored name, in the order the predict loader gives them (the
        same loader over the names alone)."""
        dataset = self.splits["predict"]
        names = copy.copy(dataset)
        names.transform = stored_name
        loader = self.even_loader(names, self.eval_batch_size)
        return "name", [str(name) for batch in loader.loader for name in batch]


def stored_name(item: Mapping[str, Any]) -> str:
    return str(item["name"])


def process_env(dataset: Any, world_size: int, rank: int) -> Any:
    """litdata's record of the DDP processes (world size and rank) of ``dataset``, replaced."""
    from litdata.utilities.env import _DistributedEnv

    return _DistributedEnv(world_size=world_size, global_rank=rank, num_nodes=dataset.distributed_env.num_nodes)


def alone(dataset: Any) -> Any:
    """A copy of ``dataset`` that one process reads whole, under DDP too."""
    single = copy.copy(dataset)
    single.distributed_env = process_env(dataset, 1, 0)
    single.shuffler = None
    return single


def batches_per_process(dataset: Any, batch_size: int, workers: int) -> int:
    """The most batches litdata gives any DDP process of ``dataset`` in an epoch: litdata assigns
    samples to processes by rule (whole batches, the rest to the last), so each process works
    out every process's count alone, without collectives."""
    own = dataset.distributed_env
    counts = []
    try:
        for rank in range(own.world_size):
            dataset.distributed_env = process_env(dataset, own.world_size, rank)
            counts.append(math.ceil(dataset.get_len(max(1, workers), batch_size) / batch_size))
    finally:
        dataset.distributed_env = own
    return max(counts)
