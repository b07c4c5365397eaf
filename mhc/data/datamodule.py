"""LightningDataModules: a shared base that serves splits, and the generated-scenes module.

A data module knows its tasks (``task_specs()``) before training starts, so the network's
heads and the config's per-task options can be checked against the data up front.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from mhc.data import generated
from mhc.data.augment import Augmentation, AugmentedDataset
from mhc.data.balance import balancing_weights, encoded_labels
from mhc.data.labels import ArrayDataset, GatheredBatches, collate, unlabelled
from mhc.errors import ConfigError
from mhc.processing.processors import TEXT, ImageProcessor, Processor
from mhc.tasks import TaskSpec

STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
}
SPLITS = ("train", "val", "test", "predict")


def check_count(option: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``, else a :class:`ConfigError` naming ``data.<option>``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"data.{option} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"data.{option} must be at least {minimum}, got {value}")
    return value


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's or a SLURM job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(cores: int | None = None, processes: int | None = None) -> int:
    """``num_workers=auto``: loader workers per training process from the machine. Each of the
    ``processes`` on this machine (``LOCAL_WORLD_SIZE``, set by Lightning's DDP launchers) gets an
    equal share of the ``cores``; one core of the share runs the step, the rest load, at most 8.
    With 2 cores or fewer per process: 0, since workers then compete with the step for the same
    cores (docs/benchmarks.md, "Loader workers": 8% slower with 2 on 2 cores)."""
    cores = available_cores() if cores is None else cores
    processes = max(1, processes if processes is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = cores // processes
    return 0 if share <= 2 else min(8, share - 1)


def processes() -> tuple[int, int]:
    """(the number of DDP processes, this one's rank): ``(1, 0)`` outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def trained_batches(trainer: Any) -> int:
    """The batches of the current epoch that ``trainer`` has trained (where a resumed run goes on)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def check_image_size(value: Any) -> list[int]:
    """``[height, width]`` of positive integers, else a :class:`ConfigError` naming ``data.image_size``."""
    size = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"data.image_size must be [height, width] with positive integers, got {value!r}")
    return size


class UnlabelledPadding(Dataset):
    """``dataset`` followed by copies of its first samples with every label masked: filler that
    evens out the processes' shares without counting any sample twice."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        if GatheredBatches.supported(dataset):
            self.gather = self.gather_padded

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self):
            return self.dataset[index]
        return unlabelled(self.dataset[(index - len(self)) % len(self)])

    def gather_padded(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples at ``indices`` in one gather of the dataset's, filler included."""
        size = len(self)
        batch = GatheredBatches(self.dataset).__getitems__([i if i < size else (i - size) % size for i in indices])
        real = torch.tensor([i < size for i in indices])
        return {**batch, "label_mask": {name: m & real for name, m in batch["label_mask"].items()}}


class EpochSampler(Sampler[int]):
    """The training order: a permutation of the ``size`` samples drawn from ``seed`` and the
    epoch, the same in every process, shared out between the ``world`` DDP processes. The shares
    are evened out with indices past the data (:class:`UnlabelledPadding`'s unlabelled filler), so
    every sample is read exactly once an epoch and every process runs the same number of steps
    (a ``DistributedSampler`` repeats samples instead). A run resumed mid-epoch draws the same
    permutation again and leaves out what was trained (:meth:`resume_at`)."""

    def __init__(self, size: int, seed: int = 0, world: int = 1, rank: int = 0) -> None:
        self.size, self.seed, self.world, self.rank = size, seed, world, rank
        self.per_process = math.ceil(size / world)
        self.epoch = 0
        self.resumed: tuple[int, int] | None = None  # (epoch, samples of it already trained)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, trained: int) -> None:
        """Leave out the first ``trained`` samples of this process's share of ``epoch``."""
        self.resumed = (epoch, trained)

    def __len__(self) -> int:
        return self.per_process  # the whole epoch's: Lightning counts a resumed epoch's batches from its start

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        order += range(self.size, self.per_process * self.world)
        mine = order[self.rank :: self.world]
        skip = 0
        if self.resumed is not None and self.resumed[0] == self.epoch:
            skip = self.resumed[1]
        self.resumed = None
        return iter(mine[skip:])


class PaddedEvalSampler(DistributedSampler):
    """Evaluation under DDP: every process gets the same number of batches (as collectives need),
    in order, and the filler samples are unlabelled, so per-head metrics gathered over the
    processes equal a single-process evaluation (a plain DistributedSampler repeats samples)."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)
        self.size = len(dataset)  # type: ignore[arg-type]
        self.num_samples = math.ceil(self.size / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        indices = list(range(self.total_size))  # indices past the data are UnlabelledPadding's filler
        return iter(indices[self.rank : self.total_size : self.num_replicas])


class TaskDataModule(pl.LightningDataModule):
    """Common loader settings and split bookkeeping; subclasses implement ``build_split``.

    Under DDP it shares samples out itself (:class:`EpochSampler`, :class:`PaddedEvalSampler`):
    every sample once an epoch and per evaluation, in the same number of batches everywhere.

    ``tasks`` stays ``None`` until :meth:`set_tasks` (the config's tasks, or a checkpoint's);
    splits built before that use the data's own :meth:`task_specs`.
    """

    shards_itself = True  # Lightning adds no DistributedSampler: the samplers here share samples out

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int | str = 0,
        pin_memory: bool = False,
        eval_batch_size: int | None = None,
        train_fraction: float = 1.0,
        persistent_workers: bool = True,
        balance: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"data.train_fraction must be in (0, 1], got {train_fraction!r}")
        self.train_fraction = train_fraction
        self.batch_size = check_count("batch_size", batch_size, minimum=1)
        self.eval_batch_size = check_count("eval_batch_size", eval_batch_size or batch_size, minimum=1)
        if num_workers == "auto":
            num_workers = auto_workers()
        self.num_workers = check_count("num_workers", num_workers, minimum=0)
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0  # workers kept between epochs
        self.splits: dict[str, Dataset] = {}
        self.tasks: list[TaskSpec] | None = None
        self.augmentation: Augmentation | None = None
        self.balance = balance  # a task whose classes training batches draw equally often (mhc.data.balance)
        self.training_sampler: EpochSampler | None = None
        self.resume_position: tuple[int, int] | None = None  # a checkpoint's (epoch, trained batches)

    def task_specs(self) -> list[TaskSpec]:
        """The tasks this data provides, with their classes (before config overrides)."""
        raise NotImplementedError

    def set_tasks(self, tasks: list[TaskSpec]) -> None:
        """The tasks after config overrides; datasets are (re)built against them."""
        self.tasks = tasks
        self.splits = {}

    def active_tasks(self) -> list[TaskSpec]:
        """The tasks datasets are built against: the configured ones, else the data's own."""
        if self.tasks is None:
            self.tasks = self.task_specs()
        return self.tasks

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has data; ``fit`` skips a missing val split instead of failing."""
        return True

    def build_split(self, split: str) -> Dataset:
        """The dataset of ``train``, ``val``, ``test`` or ``predict``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a Lightning stage (or a split name) needs; built splits are kept."""
        stage = stage or "fit"
        for split in STAGE_SPLITS.get(stage, (stage,)):
            if split not in SPLITS:
                raise ConfigError(f"unknown stage or split '{stage}'; expected one of {sorted(STAGE_SPLITS)} or {list(SPLITS)}")
            if split in self.splits or (stage == "fit" and split == "val" and not self.has_split("val")):
                continue
            dataset = self.build_split(split)
            if split == "train":
                dataset = self.augmented(self.subset(dataset) if self.train_fraction < 1.0 else dataset)
            self.splits[split] = dataset

    def use_augmentation(self, augmentation: Augmentation | None) -> None:
        """Augment the training split's images (:mod:`mhc.data.augment`); evaluation is never augmented."""
        self.augmentation = augmentation
        self.splits.pop("train", None)

    def augmented(self, dataset: Dataset) -> Dataset:
        if self.augmentation is None or not self.augmentation.active or self.augmentation.where != "loader":
            return dataset  # augment.where=device: the module augments whole batches
        processor = self.processor()
        return AugmentedDataset(dataset, self.augmentation, processor.size) if isinstance(processor, ImageProcessor) else dataset

    def subset(self, dataset: Dataset) -> Dataset:
        """A fixed random ``train_fraction`` of the training samples (the same for every seed):
        few-label fine-tuning and learning curves."""
        return Subset(dataset, self.subset_indices(len(dataset)))

    def subset_indices(self, count: int) -> list[int]:
        """The indices :meth:`subset` keeps of ``count`` training samples."""
        size = max(1, round(count * self.train_fraction))
        return sorted(torch.randperm(count, generator=torch.Generator().manual_seed(0))[:size].tolist())

    def input_kind(self) -> str:
        """``image`` or ``text`` (token ids): what this data's inputs are."""
        return self.processor().kind

    def train_labels(self, tasks: Sequence[TaskSpec]) -> dict[str, Any]:
        """Each task's encoded training labels (``-1`` where missing; :mod:`mhc.data.labels`), to
        profile the data before training (:mod:`mhc.data.profile`)."""
        self.setup("train")
        return {task.name: encoded_labels(self.splits["train"], task.name) for task in tasks}

    def train_words(self) -> np.ndarray | None:
        """Words per training text, where the data holds raw texts (:mod:`mhc.data.profile`); else ``None``."""
        return None

    def processor(self) -> Processor:
        """How this data's raw inputs become network input; the network saves it, so prediction
        reads raw inputs the same way."""
        return ImageProcessor(size=[64, 64], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])

    def use_processor(self, processor: Processor) -> None:
        """Serve the data the way a trained network reads it, for evaluation and prediction from
        a checkpoint: here its input size must be the data's."""
        own = self.processor()
        if processor.kind != own.kind:
            inputs = {"image": "images", "text": "text"}
            raise ConfigError(
                f"the checkpoint's model reads {inputs[processor.kind]} but this data gives {inputs[own.kind]}; "
                + ("give it token data (data=manifest with a 'text' column, or data=sequences)" if processor.kind == TEXT
                   else "give it image data")
            )
        if isinstance(processor, ImageProcessor) and processor.size != own.size:
            as_override = "[" + ",".join(str(side) for side in processor.size) + "]"  # one shell word, as Hydra reads it
            raise ConfigError(f"data.image_size is {own.size} but the checkpoint was trained at {processor.size}; "
                              f"set data.image_size={as_override}, or leave the data to the checkpoint (data=checkpoint)")

    def loader(self, split: str, shuffle: bool = False, shard: bool = True) -> DataLoader:
        """A DataLoader of ``split`` (built on first use); the Lightning hooks below use it too.
        Under DDP an evaluation split is sharded over the processes unless ``shard=False`` (every
        process then reads all of it, as calibration does)."""
        if split not in self.splits:
            self.setup(split)
        dataset, sampler = self.splits[split], None
        world, rank = processes()
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed (Lightning's seed_everything)
        if shard and not shuffle and split in ("val", "test") and world > 1:
            dataset = UnlabelledPadding(dataset)
            sampler = PaddedEvalSampler(dataset)
        if shuffle and self.balance:  # drawn with replacement: each process draws its share with its own generator
            generator = torch.Generator().manual_seed(seed * 7919 + rank) if world > 1 else None
            sampler = WeightedRandomSampler(self.balancing_weights(dataset).tolist(), math.ceil(len(dataset) / world),
                                            replacement=True, generator=generator)
        elif shuffle:
            sampler = EpochSampler(len(dataset), seed=seed, world=world, rank=rank)  # type: ignore[arg-type]
            dataset = UnlabelledPadding(dataset) if world > 1 else dataset
            if split == "train":
                self.training_sampler = sampler
                if self.resume_position is not None:
                    epoch, trained = self.resume_position
                    sampler.resume_at(epoch, trained * self.batch_size)
                    self.resume_position = None
        if GatheredBatches.supported(dataset):
            dataset = GatheredBatches(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=False,  # training draws its order from its sampler
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=False,
            collate_fn=collate,
        )

    # -- the training epoch's position in checkpoints (Lightning saves and restores it) -----------
    def state_dict(self) -> dict[str, Any]:
        """The epoch and the batches of it trained, so a resumed run leaves them out."""
        trainer = self.trainer
        if self.training_sampler is None or trainer is None:
            return {}
        return {"epoch": int(trainer.current_epoch), "trained_batches": trained_batches(trainer)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "trained_batches" in state:
            self.resume_position = (int(state["epoch"]), int(state["trained_batches"]))

    def predict_inputs(self) -> tuple[str, list[str]]:
        """(column name, each predicted sample's input cell in order): what a predictions table
        joins its rows on."""
        dataset = self.splits["predict"]
        return dataset.input_column, list(dataset.inputs)

    def balancing_weights(self, dataset: Dataset) -> Any:
        """Per-sample weights that draw each class of the ``balance`` task equally often."""
        tasks = {t.name: t for t in self.active_tasks()}
        if self.balance not in tasks:
            raise ConfigError(f"data.balance: unknown task '{self.balance}'; the tasks are {list(tasks)}")
        return balancing_weights(tasks[self.balance], encoded_labels(dataset, self.balance))

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict", shuffle=False)


class ScenesDataModule(TaskDataModule):
    """The built-in generated scenes (see :mod:`mhc.data.generated`), cached under ``cache_dir``."""

    def __init__(
        self,
        cache_dir: str = "~/.cache/mhc",
        num_train: int = 8000,
        num_val: int = 1000,
        num_test: int = 1000,
        missing_fraction: float = 0.1,
        seed: int = 0,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        self.cache_dir = cache_dir
        sizes = {split: check_count(f"num_{split}", n, minimum=1) for split, n in (("train", num_train), ("val", num_val), ("test", num_test))}
        if isinstance(missing_fraction, bool) or not isinstance(missing_fraction, (int, float)) or not 0.0 <= missing_fraction < 1.0:
            raise ConfigError(f"data.missing_fraction must be in [0, 1), got {missing_fraction!r}")
        self.sizes = {**sizes, "predict": sizes["test"]}
        self.missing_fraction = missing_fraction
        self.seed = seed

    def task_specs(self) -> list[TaskSpec]:
        return generated.scene_tasks()

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            generated.load_or_generate(self.cache_dir, split, self.sizes[split], self.seed, self.missing_fraction)

    def build_split(self, split: str) -> Dataset:
        source = "test" if split == "predict" else split
        images, labels = generated.load_or_generate(
            self.cache_dir, source, self.sizes[source], self.seed, self.missing_fraction
        )
        return ArrayDataset(images, labels, self.active_tasks(), source=f"scenes/{source}")
