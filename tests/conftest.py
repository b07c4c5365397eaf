"""Shared fixtures: tiny tasks and a tiny net, and an isolated data cache."""

from __future__ import annotations

import pytest
import torch

from mhc.model import MultiHeadNet
from mhc.tasks import TaskSpec


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MHC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


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
                        preprocess=None).eval()
