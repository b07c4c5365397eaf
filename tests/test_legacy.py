"""Checkpoints and export folders written by an earlier mhc still load and predict the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mhc

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("source", ["scenes_cnn.ckpt", "scenes_cnn_export"])
def test_image_model_predicts_as_before(source):
    model = mhc.load(LEGACY / source)
    out = model.predict([str(LEGACY / name) for name in EXPECTED["images"]])
    assert set(out) == set(EXPECTED["image_probs"])
    for task, probs in EXPECTED["image_probs"].items():
        torch.testing.assert_close(out[task].probs, torch.tensor(probs), atol=1e-6, rtol=0)
        assert out[task].labels == EXPECTED["image_labels"][task]


def test_text_model_predicts_as_before():
    model = mhc.load(LEGACY / "text_seq.ckpt")
    out = model.predict(EXPECTED["texts"])
    for task, probs in EXPECTED["text_probs"].items():
        torch.testing.assert_close(out[task].probs, torch.tensor(probs), atol=1e-6, rtol=0)
        assert out[task].labels == EXPECTED["text_labels"][task]
