"""A built-in, generated token-sequence data set whose tasks need different attention patterns.

Vocabulary (``VOCAB``): ``<pad>`` (0), the marker ``|`` (1), sixteen symbols in four groups
(``a0..a3``, ``b0..b3``, ``c0..c3``, ``d0..d3``), two probes ``X`` and ``Y``, and ``<mask>``
(never generated; masked-token pretraining hides tokens behind it). Each sequence
holds 12 to 32 tokens with one marker, one ``X`` and one ``Y``. The vocabulary is saved with
the model as a word tokenizer, so a trained model also reads text: ``"a0 b1 | X c2 Y"``.

========  ==========  =======  ===================================================  ==================
task      kind        classes  label                                                pattern it needs
========  ==========  =======  ===================================================  ==================
first     multiclass  a..d     group of the first token                             positional / first
before    multiclass  a..d     group of the token just before the marker            previous token
majority  multiclass  a..d     most frequent group                                  broad
ordered   binary      no, yes  does ``X`` come before ``Y``                         two probes
========  ==========  =======  ===================================================  ==================
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mhc.data.datamodule import TaskDataModule
from mhc.data.labels import encode_batch, sample_of, validate_labels
from mhc.processing.processors import TextProcessor
from mhc.processing.tokenizer import WordTokenizer
from mhc.tasks import TaskSpec

GROUPS = ["a", "b", "c", "d"]
SYMBOLS = [f"{g}{i}" for g in GROUPS for i in range(4)]
VOCAB = ["<pad>", "|", *SYMBOLS, "X", "Y", "<mask>"]
PAD, MARKER, FIRST_SYMBOL = 0, 1, 2
X_ID, Y_ID = VOCAB.index("X"), VOCAB.index("Y")
MIN_LENGTH, MAX_LENGTH = 12, 32


def sequence_tasks() -> list[TaskSpec]:
    return [
        TaskSpec("first", "multiclass", GROUPS),
        TaskSpec("before", "multiclass", GROUPS),
        TaskSpec("majority", "multiclass", GROUPS),
        TaskSpec("ordered", "binary", ["no", "yes"]),
    ]


def make_sequence(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int]]:
    """One sequence of token ids (unpadded) and its labels."""
    length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
    while True:  # a unique majority group among the symbols
        majority = int(rng.integers(4))
        probs = np.full(4, 0.16)
        probs[majority] = 0.52
        groups = rng.choice(4, size=length - 3, p=probs)
        counts = np.bincount(groups, minlength=4)
        if (counts == counts.max()).sum() == 1:
            break
    symbols = FIRST_SYMBOL + 4 * groups + rng.integers(0, 4, size=len(groups))
    # Final positions of the marker and the two probes: never first, never just before the marker.
    marker = int(rng.integers(1, length))
    free = [p for p in range(1, length) if p not in (marker, marker - 1)]
    first_probe, second_probe = sorted(rng.choice(free, size=2, replace=False).tolist())
    x_first = bool(rng.integers(2))
    specials = {marker: MARKER, first_probe: X_ID if x_first else Y_ID, second_probe: Y_ID if x_first else X_ID}
    tokens = symbols.tolist()
    for position in sorted(specials):  # ascending, so each lands at its final position
        tokens.insert(position, specials[position])
    ids = np.array(tokens, dtype=np.int64)
    before = ids[marker - 1]
    labels = {
        "first": int((ids[0] - FIRST_SYMBOL) // 4),
        "before": int((before - FIRST_SYMBOL) // 4),
        "majority": int(counts.argmax()),
        "ordered": int(np.flatnonzero(ids == X_ID)[0] < np.flatnonzero(ids == Y_ID)[0]),
    }
    return ids, labels


def generate_sequences(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Token ids int64 [n, MAX_LENGTH] (right-padded with 0) and labels per task."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, MAX_LENGTH), dtype=np.int64)
    labels = {t.name: np.zeros(n, dtype=np.int64) for t in sequence_tasks()}
    for i in range(n):
        seq, lab = make_sequence(rng)
        ids[i, : len(seq)] = seq
        for name, value in lab.items():
            labels[name][i] = value
    return ids, labels


class TokenDataset(Dataset):
    """Padded token ids [N, L] with encoded labels; samples carry ``tokens`` instead of ``image``."""

    def __init__(self, ids: np.ndarray, labels: dict[str, np.ndarray], tasks: list[TaskSpec], source: str) -> None:
        validate_labels(tasks, labels, source)
        self.ids, self.labels, self.tasks = torch.from_numpy(ids), labels, tasks

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples at ``indices``, collated in one gather (:class:`~mhc.data.labels.GatheredBatches`)."""
        targets, label_mask = encode_batch(self.tasks, self.labels, indices)
        return {"tokens": self.ids[list(indices)], "targets": targets, "label_mask": label_mask}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return sample_of(self.gather([index]))


class SequencesDataModule(TaskDataModule):
    """The generated sequences (deterministic in ``seed``; generated in memory in about a second)."""

    def __init__(self, num_train: int = 8000, num_val: int = 1000, num_test: int = 1000, seed: int = 0, **loader: Any) -> None:
        super().__init__(**loader)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test, "predict": num_test}
        self.seed = seed

    def task_specs(self) -> list[TaskSpec]:
        return sequence_tasks()

    def processor(self) -> TextProcessor:
        return TextProcessor(WordTokenizer(VOCAB), MAX_LENGTH)

    def build_split(self, split: str) -> Dataset:
        source = "test" if split == "predict" else split
        offset = {"train": 0, "val": 1, "test": 2}[source] * 100_000
        ids, labels = generate_sequences(self.sizes[source], self.seed + offset)
        return TokenDataset(ids, labels, self.active_tasks(), source=f"sequences/{source}")
