"""Shared fixtures: tiny tasks and a tiny net, an isolated data cache, and a small sequence
transformer trained on the built-in sequences (for the attention analysis and pruning)."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads in tests; set before huggingface_hub reads it

import pytest
import torch

from mhc.data import SequencesDataModule
from mhc.data.sequences import VOCAB, sequence_tasks
from mhc.io import save_checkpoint
from mhc.losses import batch_losses
from mhc.model import MultiHeadNet
from mhc.tasks import TaskSpec


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MHC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _library_logger():
    """A command run in this process sends the ``mhc`` logger to its console only: each test starts
    with the logger as the library leaves it (propagating to pytest's ``caplog``)."""
    logger = logging.getLogger("mhc")
    logger.handlers.clear()
    logger.propagate, logger.level = True, logging.NOTSET


@pytest.fixture
def tasks() -> list[TaskSpec]:
    return [
        TaskSpec("coarse", "multiclass", ["a", "b"]),
        TaskSpec("fine", "multiclass", ["a1", "a2", "b1", "b2", "b3"], masked=True, parent="coarse",
                 allowed_by_parent={"a": ["a1", "a2"], "b": ["b1", "b2", "b3"]}),
        TaskSpec("flag", "binary", ["no", "yes"], masked=True),
        TaskSpec("tags", "multilabel", ["x", "y", "z"], masked=True),
    ]


@pytest.fixture
def tiny_net(tasks) -> MultiHeadNet:
    torch.manual_seed(0)
    return MultiHeadNet({"name": "cnn", "widths": [8, 16], "stem_stride": 2}, tasks,
                        processor=None).eval()


TRAINED_TASKS = ("first", "majority")  # the two tasks a tiny model learns in seconds
BACKBONE = {"name": "seq_tiny", "vocab_size": len(VOCAB), "max_length": 32, "dim": 64, "depth": 2, "num_heads": 4}


@pytest.fixture(scope="session")
def sequences():
    data = SequencesDataModule(num_train=4000, num_val=512, num_test=256, batch_size=64)
    data.set_tasks([t for t in sequence_tasks() if t.name in TRAINED_TASKS])
    return data


@pytest.fixture(scope="session")
def trained_sequence_net(sequences):
    """seq_tiny (2 layers x 4 heads) after 300 AdamW steps: both heads >= 95% on validation."""
    torch.manual_seed(0)
    net = MultiHeadNet(BACKBONE, sequences.tasks, sequences.processor())
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    steps = 0
    while steps < 300:
        for batch in sequences.loader("train", shuffle=True):
            loss = sum(batch_losses(net.tasks, net.hierarchy, net(batch["tokens"]), batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == 300:
                break
    return net.eval()


@pytest.fixture(scope="session")
def sequence_checkpoint(trained_sequence_net, tmp_path_factory):
    return save_checkpoint(trained_sequence_net, tmp_path_factory.mktemp("sequences") / "model.ckpt")


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory):
    """A tiny BERT and its WordPiece tokenizer, saved as a Hugging Face model folder."""
    from tests.pretrained_models import bert_folder

    return bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def gpt2_folder(tmp_path_factory):
    """A tiny GPT-2 and its BPE tokenizer (no padding token), saved as a Hugging Face model folder."""
    from tests.pretrained_models import gpt2_folder

    return gpt2_folder(tmp_path_factory.mktemp("gpt2"))
