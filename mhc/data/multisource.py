"""Tasks that come from different data sets: each source labels its own tasks only.

Every batch is drawn from one source (its samples carry labels for that source's tasks; the
other tasks are unlabelled, so label masks keep them out of losses and metrics). Which source
the next training batch comes from is the sampling policy:

* ``round_robin``: the sources in turn,
* ``proportional``: source s with probability ``n_s / sum(n)``,
* ``temperature``: probability proportional to ``n_s ** (1 / T)``; T = 1 is proportional, a
  large T tends to uniform, so small data sets are seen more often (Arivazhagan et al. 2019).

An epoch holds as many batches as the sources would give one after another; a source that runs
out starts over with a fresh shuffle. Under DDP each process takes its share of the batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from mhc.data.augment import Augmentation
from mhc.data.datamodule import TaskDataModule, processes
from mhc.errors import ConfigError
from mhc.processing.processors import Processor
from mhc.tasks import TaskSpec

SAMPLING = ("round_robin", "proportional", "temperature")


def unlabelled_target(task: TaskSpec) -> torch.Tensor:
    """A placeholder target of ``task``'s shape and dtype (masked out by its label mask)."""
    if task.kind == "multilabel":
        return torch.zeros(task.num_classes)
    return torch.tensor(0.0) if task.kind == "binary" else torch.tensor(0, dtype=torch.long)


class SourceDataset(Dataset):
    """One source's samples, with the tasks of the other sources present but unlabelled."""

    def __init__(self, dataset: Dataset, tasks: Sequence[TaskSpec]) -> None:
        self.dataset = dataset
        self.tasks = list(tasks)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        targets, mask = dict(sample["targets"]), dict(sample["label_mask"])
        for task in self.tasks:
            if task.name not in targets:
                targets[task.name] = unlabelled_target(task)
                mask[task.name] = torch.tensor(False)
        return {**sample, "targets": targets, "label_mask": mask}


def source_probabilities(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> torch.Tensor:
    """The probability of drawing the next batch from each source."""
    n = torch.tensor(sizes, dtype=torch.float64)
    if sampling == "proportional":
        return n / n.sum()
    if sampling == "temperature":
        scaled = n ** (1.0 / temperature)
        return scaled / scaled.sum()
    return torch.full_like(n, 1.0 / len(sizes))


class SourceBatchSampler(Sampler[list[int]]):
    """Batches of indices into the concatenated sources, each batch from a single source.

    ``shuffle=False`` (evaluation) walks every source once, in order, without sampling.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, sampling: str = "proportional", temperature: float = 2.0,
                 shuffle: bool = True, seed: int = 0) -> None:
        if sampling not in SAMPLING:
            raise ConfigError(f"data.sampling must be one of {list(SAMPLING)}, got '{sampling}'")
        if temperature <= 0:
            raise ConfigError(f"data.temperature must be > 0, got {temperature}")
        self.sizes, self.batch_size = list(sizes), batch_size
        self.sampling, self.temperature = sampling, temperature
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        if not self.shuffle:
            return [list(range(o + i, o + min(i + self.batch_size, n)))
                    for o, n in zip(self.offsets, self.sizes) for i in range(0, n, self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = sum(math.ceil(n / self.batch_size) for n in self.sizes)
        if self.sampling == "round_robin":
            live = [s for s, n in enumerate(self.sizes) if n > 0]
            order = [live[i % len(live)] for i in range(total)]
        else:
            probs = source_probabilities(self.sizes, self.sampling, self.temperature)
            order = torch.multinomial(probs, total, replacement=True, generator=generator).tolist()
        pools: list[list[int]] = [[] for _ in self.sizes]
        batches = []
        for source in order:
            if len(pools[source]) < self.batch_size:  # refill: a fresh shuffle of the source
                pools[source] += torch.randperm(self.sizes[source], generator=generator).tolist()
            chosen, pools[source] = pools[source][: self.batch_size], pools[source][self.batch_size :]
            batches.append([self.offsets[source] + i for i in chosen])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        world, rank = processes()
        if world > 1:  # each process its share; training shares are equal in length
            if self.shuffle and len(batches) >= world:
                batches = batches[: len(batches) - len(batches) % world]
            batches = batches[rank::world]
        return iter(batches)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class MultiSourceDataModule(TaskDataModule):
    """Several data modules, each labelling its own tasks, trained as one multi-task model.

    Args:
        sources: ``{name: data module}`` or ``{name: {"data": data module, "tasks": [names]}}``
            (``tasks`` keeps only those tasks of the source).
        sampling: ``round_robin``, ``proportional`` or ``temperature`` (see the module docs).
        temperature: T of ``temperature`` sampling.
        seed: seeds the batch order (with the epoch).
    """

    shards_itself = True  # its batch sampler splits batches between processes (no DistributedSampler)

    def __init__(self, sources: Mapping[str, Any], sampling: str = "proportional", temperature: float = 2.0,
                 seed: int = 0, **loader: Any) -> None:
        super().__init__(**loader)
        if self.train_fraction < 1.0:
            raise ConfigError("data.train_fraction: set it per source (data.sources.<name>.data.train_fraction)")
        if self.balance:
            raise ConfigError("data.balance: multi-source batches follow data.sampling; balance a task within one source")
        if not sources:
            raise ConfigError("data.sources is empty; give at least one source data module")
        self.sources: dict[str, TaskDataModule] = {}
        self.keep: dict[str, list[str] | None] = {}
        for name, source in sources.items():
            module, keep = (source.get("data"), source.get("tasks")) if isinstance(source, Mapping) else (source, None)
            if not isinstance(module, TaskDataModule):
                raise ConfigError(f"data.sources.{name} is not a data module (give its _target_)")
            self.sources[name], self.keep[name] = module, None if keep is None else list(keep)
        SourceBatchSampler([1], 1, sampling, temperature)  # checks the options up front
        self.sampling, self.temperature, self.seed = sampling, temperature, seed

    def source_tasks(self, name: str) -> list[TaskSpec]:
        own = self.sources[name].task_specs()
        keep = self.keep[name]
        if keep is None:
            return own
        unknown = sorted(set(keep) - {t.name for t in own})
        if unknown:
            raise ConfigError(f"data.sources.{name}.tasks: {unknown} not provided by that source; it has {[t.name for t in own]}")
        return [t for t in own if t.name in keep]

    def task_specs(self) -> list[TaskSpec]:
        tasks: dict[str, tuple[str, TaskSpec]] = {}
        for name in self.sources:
            for task in self.source_tasks(name):
                if task.name in tasks:
                    raise ConfigError(f"task '{task.name}' comes from sources '{tasks[task.name][0]}' and '{name}'; "
                                      "each task must come from one source (keep it in one with data.sources.<name>.tasks)")
                tasks[task.name] = (name, task)
        return [task for _, task in tasks.values()]

    def set_tasks(self, tasks: list[TaskSpec]) -> None:
        super().set_tasks(tasks)
        for name, source in self.sources.items():
            own = {t.name for t in self.source_tasks(name)}
            source.set_tasks([t for t in tasks if t.name in own])

    def use_augmentation(self, augmentation: Augmentation | None) -> None:
        """Each source augments its own training split, with the flip rules of its own tasks."""
        self.splits.pop("train", None)
        for name, source in self.sources.items():
            own = {t.name for t in self.source_tasks(name)}
            source.use_augmentation(None if augmentation is None else
                                    dataclasses.replace(augmentation, tasks=[t for t in augmentation.tasks if t.name in own]))

    def processor(self) -> Processor:
        first, *rest = [(name, source.processor()) for name, source in self.sources.items()]
        for name, processor in rest:
            if processor.to_dict() != first[1].to_dict():
                raise ConfigError(f"data.sources.{name} serves inputs {processor.to_dict()} but data.sources.{first[0]} "
                                  f"serves {first[1].to_dict()}; every source must give inputs of one size and normalisation")
        return first[1]

    def prepare_data(self) -> None:
        for source in self.sources.values():
            source.prepare_data()

    def has_split(self, split: str) -> bool:
        return all(source.has_split(split) for source in self.sources.values())

    def build_split(self, split: str) -> Dataset:
        tasks = self.active_tasks()
        parts = []
        for source in self.sources.values():
            source.setup(split)
            parts.append(SourceDataset(source.splits[split], tasks))
        return ConcatDataset(parts)

    def loader(self, split: str, shuffle: bool = False, shard: bool = True) -> DataLoader:
        """Batches of one source at a time (``shard`` is the base class's: Lightning shards these batches)."""
        if split not in self.splits:
            self.setup(split)
        dataset: ConcatDataset = self.splits[split]  # type: ignore[assignment]
        sizes = [len(d) for d in dataset.datasets]  # type: ignore[arg-type]
        sampler = SourceBatchSampler(sizes, self.batch_size if shuffle else self.eval_batch_size, self.sampling,
                                     self.temperature, shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)
