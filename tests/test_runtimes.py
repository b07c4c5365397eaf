"""The four runtimes give the same predictions for the same inputs: ``mhc.load(...).predict``,
``OnnxModel`` (ONNX Runtime), the HTTP service and ``mhc-predict``, for an image and a text
model. They share one processor and one decoder; only the engine computing the logits differs."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import mhc
from mhc.export import OnnxModel, export_model
from mhc.io import save_checkpoint
from mhc.model import MultiHeadNet
from mhc.processing.processors import TextProcessor
from mhc.processing.tokenizer import CharTokenizer, PretrainedTokenizer
from mhc.serve import create_app
from mhc.tasks import TaskSpec

TEXTS = ["the printer is on fire", "refund my order, please", "zebra"]  # z is outside the tokenizer
TEXT_TASKS = [TaskSpec("topic", "multiclass", ["billing", "hardware", "other"]),
              TaskSpec("urgent", "binary", ["no", "yes"], masked=True),
              TaskSpec("tags", "multilabel", ["a", "b", "c"], masked=True)]


def image_model(tasks, backbone: dict | None = None) -> MultiHeadNet:
    torch.manual_seed(0)
    return MultiHeadNet(backbone or {"name": "cnn", "widths": [8, 16], "stem_stride": 2}, tasks).eval()


# The text tasks calibrated (mhc.calibration): temperatures, Platt intercepts, thresholds and
# abstention every runtime applies.
CALIBRATED_TASKS = [TaskSpec("topic", "multiclass", ["billing", "hardware", "other"], temperature=[0.5],
                             min_confidence=0.88),
                    TaskSpec("urgent", "binary", ["no", "yes"], masked=True, temperature=[0.3], calibration_bias=[-0.4],
                             thresholds=[0.55]),
                    TaskSpec("tags", "multilabel", ["a", "b", "c"], masked=True, temperature=[0.2, 1.0, 3.0],
                             thresholds=[0.6, 0.45, 0.52])]


def text_model(tasks: list[TaskSpec] = TEXT_TASKS) -> MultiHeadNet:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.fit(TEXTS[:2])
    backbone = {"name": "seq_tiny", "vocab_size": len(tokenizer), "max_length": 16, "dim": 16, "depth": 1, "num_heads": 2}
    return MultiHeadNet(backbone, tasks, TextProcessor(tokenizer, 16)).eval()


def pretrained_text_model(folder) -> MultiHeadNet:
    """A BERT from a Hugging Face folder, reading texts through its own WordPiece tokenizer."""
    torch.manual_seed(0)
    tokenizer = PretrainedTokenizer.from_pretrained(str(folder))
    backbone = {"name": "hf", "model": str(folder), "pretrained": True, "max_length": 16, "pad_id": tokenizer.pad_id}
    return MultiHeadNet(backbone, TEXT_TASKS, TextProcessor(tokenizer, 16)).eval()


def write_images(folder) -> list[str]:
    """Three PNG files, two of them not at the model's size (the processor resizes them)."""
    rng = np.random.default_rng(0)
    names = []
    for i, (height, width) in enumerate([(64, 64), (40, 50), (90, 70)]):
        name = f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def served(model: MultiHeadNet, inputs: list) -> list[dict]:
    with TestClient(create_app(model)) as client:
        response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def assert_same(expected: dict, labels: dict, probs: dict) -> None:
    """``labels``/``probs``: {task: per-input labels / [N, C] probabilities} from another runtime."""
    for task, pred in expected.items():
        assert labels[task] == pred.labels, task
        np.testing.assert_allclose(np.asarray(probs[task]), pred.probs.numpy(), atol=2e-5, err_msg=task)


def columns(predictions: dict) -> tuple[dict, dict]:
    return {t: p.labels for t, p in predictions.items()}, {t: p.probs for t, p in predictions.items()}


def from_service(answers: list[dict], expected: dict) -> tuple[dict, dict]:
    labels = {task: [a[task]["label"] for a in answers] for task in expected}
    probs = {task: [[a[task]["probabilities"][c] for c in pred.classes] for a in answers] for task, pred in expected.items()}
    return labels, probs


def from_table(path, expected: dict) -> tuple[dict, dict]:
    table = pd.read_csv(path, keep_default_na=False)
    labels = {}
    for task, pred in expected.items():
        column = table[task].astype(str).tolist()
        multilabel = isinstance(pred.labels[0], list)
        labels[task] = [[c for c in cell.split("|") if c] for cell in column] if multilabel else [c or None for c in column]
    probs = {task: table[[f"{task}__p_{c}" for c in pred.classes]].to_numpy() for task, pred in expected.items()}
    return labels, probs


@pytest.mark.parametrize("kind", ["image", "timm_image", "text", "calibrated_text", "pretrained_text"])
def test_four_runtimes_agree(kind, tasks, tmp_path, request):
    if kind == "calibrated_text":
        net = text_model(CALIBRATED_TASKS)
    elif kind == "pretrained_text":
        net = pretrained_text_model(request.getfixturevalue("bert_folder"))
    elif kind == "timm_image":
        net = image_model(tasks, {"name": "timm", "model": "test_resnet"})
    else:
        net = image_model(tasks) if kind == "image" else text_model()
    folder = export_model(net, tmp_path / "export", ["safetensors", "onnx"])
    ckpt = save_checkpoint(net, tmp_path / "model.ckpt")
    if kind.endswith("image"):
        names = write_images(tmp_path)
        inputs = [str(tmp_path / name) for name in names]
        wire = [base64.b64encode((tmp_path / name).read_bytes()).decode("ascii") for name in names]
        pd.DataFrame({"image": names}).to_csv(tmp_path / "inputs.csv", index=False)
    else:
        inputs = wire = TEXTS
        pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "inputs.csv", index=False)

    expected = mhc.load(folder).predict(inputs)
    assert_same(expected, *columns(mhc.load(ckpt).predict(inputs)))
    assert_same(expected, *columns(OnnxModel(folder).predict(inputs)))
    assert_same(expected, *from_service(served(mhc.load(folder), wire), expected))
    table = mhc.predict(["data=manifest", f"data.predict={tmp_path / 'inputs.csv'}"], ckpt=ckpt,
                        output=tmp_path / "predictions.csv", output_dir=tmp_path / "run")
    assert_same(expected, *from_table(table, expected))
    if kind == "calibrated_text":  # the calibration travelled, and decides: not the plain model's answers
        plain = mhc.load(export_model(text_model(), tmp_path / "plain", ["safetensors"])).predict(inputs)
        assert any(not np.allclose(plain[t].probs.numpy(), expected[t].probs.numpy()) for t in expected)
        urgent = expected["urgent"]
        assert urgent.labels == ["yes" if p >= 0.55 else "no" for p in urgent.probs[:, 1].tolist()]
        sure = (expected["topic"].probs.max(-1).values >= 0.88).tolist()
        assert 0 < sum(sure) < len(sure)  # some answers, some abstentions: None everywhere alike
        assert [label is not None for label in expected["topic"].labels] == sure
    if kind.endswith("image"):  # a child is decoded under its parent's prediction everywhere
        for coarse, fine in zip(expected["coarse"].labels, expected["fine"].labels):
            assert fine in net.tasks["fine"].allowed_by_parent[coarse]
