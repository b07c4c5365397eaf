"""Training from timm and Hugging Face models, the way a user does: a local weights file or model
folder, label masks and output masks, a gradient method; then the checkpoint loads with the
folder gone and no network, predicts, and exports to ONNX with the same logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from timm.data import resolve_data_config
from transformers import AutoTokenizer

import mhc
from mhc.api import analyze, compose_config, train
from mhc.export import OnnxModel, export_model
from tests.api.conftest import TINY_SCENES
from tests.pretrained_models import TEXTS, timm_weights, vit_folder

QUICK = ["trainer.max_epochs=1", "~callbacks.progress_bar", "test=false"]


def assert_onnx_matches(net: mhc.MultiHeadNet, folder, inputs: torch.Tensor) -> None:
    export_model(net, folder, ["safetensors", "onnx"])
    with torch.no_grad():
        expected = net.eval()(inputs)
    got = OnnxModel(folder).logits(inputs)
    for task in net.tasks:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-4, atol=1e-4)


def test_timm_backbone_trains_with_masks_and_a_gradient_method_then_exports(tmp_path):
    weights = timm_weights(tmp_path / "weights" / "test_resnet.safetensors")
    cfg = compose_config("train", [*TINY_SCENES, *QUICK, "backbone=timm", "backbone.model=test_resnet",
                                   f"backbone.pretrained={weights}", "weighting=pcgrad"], output_dir=tmp_path / "run")
    result = train(cfg)
    net = mhc.load(result.last_checkpoint)
    expected = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg("test_resnet").to_dict())
    assert (net.processor.mean, net.processor.std) == (list(expected["mean"]), list(expected["std"]))
    assert "pretrained" not in net.config()["backbone"]  # loading never reads the weights file again
    shutil.rmtree(tmp_path / "weights")
    assert {"color", "tone"} <= set(result.metrics["val"])  # a masked child task under its parent
    assert_onnx_matches(net, tmp_path / "export", torch.rand(3, 3, 64, 64))


def analysed_heads(ckpt, folder, *data: str) -> list[dict]:
    """``mhc-analyze`` of ``ckpt``: the heads of its ``analysis.json``, after checking the report."""
    cfg = compose_config("analyze", [f"ckpt={ckpt}", *data, "samples=[0]", "max_batches=1", "importance_split=null"],
                         output_dir=folder)
    report = analyze(cfg).report.read_text()
    assert "figures/attention_sample0.png" in report and "figures/importance.png" in report
    summary = json.loads((folder / "analysis.json").read_text())
    assert summary["pruning_curve"] == []  # these models cannot remove heads: the curve is left out
    return summary["heads"]


def test_timm_vit_is_built_at_the_data_image_size_and_analysed(tmp_path):
    cfg = compose_config("train", [*TINY_SCENES, *QUICK, "backbone=timm", "backbone.model=test_vit", "backbone.pretrained=false"],
                         output_dir=tmp_path)  # test_vit is made for 160 px; the scenes are 64 px
    result = train(cfg)
    net = mhc.load(result.last_checkpoint)
    assert net.config()["backbone"]["image_size"] == [64, 64] == net.processor.size
    assert_onnx_matches(net, tmp_path / "export", torch.rand(2, 3, 64, 64))
    heads = analysed_heads(result.last_checkpoint, tmp_path / "analysis")  # on the checkpoint's own data
    blocks = net.backbone.model.blocks
    assert len(heads) == len(blocks) * blocks[0].attn.num_heads
    assert all(h["importance/shape"] >= 0 for h in heads)


def text_manifest(n: int, seed: int) -> pd.DataFrame:
    """Texts with a topic, a sentiment missing on every third row (label masks) and, on some
    rows, the topics a sample may be (output masks)."""
    rng = np.random.default_rng(seed)
    topics = ["animals", "orders", "weather"]
    rows = []
    for i in range(n):
        topic = topics[i % 3]
        words = {"animals": "cat dog bird", "orders": "order refund printer", "weather": "sun sea morning"}[topic].split()
        rows.append({"text": f"the {rng.choice(words)} {rng.choice(TEXTS)}", "topic": topic,
                     "mood": "" if i % 3 == 0 else ("good", "bad")[i % 2],
                     "topic__allowed": f"{topic}|weather" if i % 4 == 0 else ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, bert_folder):
    """A BERT model trained from a local folder on a text manifest; the folder is deleted after."""
    root = tmp_path_factory.mktemp("hf")
    model = shutil.copytree(bert_folder, root / "model")
    text_manifest(48, 0).to_csv(root / "train.csv", index=False)
    text_manifest(18, 1).to_csv(root / "val.csv", index=False)
    cfg = compose_config("train", [*QUICK, "backbone=hf", f"backbone.model={model}", f"data.train={root}/train.csv",
                                   f"data.val={root}/val.csv", "data.max_length=16", "data.batch_size=16",
                                   "optimizer.lr=1e-3", "weighting=mgda"], output_dir=root / "run")
    result = train(cfg)
    net = mhc.load(result.last_checkpoint)
    before = net.predict(TEXTS)
    ids = AutoTokenizer.from_pretrained(model)(TEXTS, truncation=True, max_length=16, padding="max_length",
                                               return_tensors="pt")["input_ids"]
    shutil.rmtree(model)
    return result, before, ids


def test_hf_checkpoint_loads_with_the_model_folder_gone(hf_run):
    result, before, ids = hf_run
    net = mhc.load(result.last_checkpoint)
    assert net.tokenizer.kind == "pretrained" and "config" in net.config()["backbone"]
    torch.testing.assert_close(net.processor.batch(TEXTS), ids)  # the model's own tokenizer, saved
    after = net.predict(TEXTS)
    for task, prediction in before.items():
        assert after[task].labels == prediction.labels
        torch.testing.assert_close(after[task].probs, prediction.probs)
    assert {"topic", "mood"} <= set(result.metrics["val"])


def test_hf_checkpoint_is_analysed(hf_run, tmp_path):
    result, _, _ = hf_run
    root = result.output_dir.parent
    heads = analysed_heads(result.last_checkpoint, tmp_path, "data=manifest", f"data.train={root}/train.csv",
                           f"data.val={root}/val.csv")
    assert len(heads) == 2 * 2 and {"importance/topic", "importance/mood", "entropy"} <= set(heads[0])


def test_hf_model_exports_to_onnx_and_reads_texts(hf_run, tmp_path):
    result, _, ids = hf_run
    net = mhc.load(result.last_checkpoint)
    assert_onnx_matches(net, tmp_path, ids)
    onnx = OnnxModel(tmp_path).predict(TEXTS)
    for task, prediction in net.predict(TEXTS).items():
        assert onnx[task].labels == prediction.labels


def test_hf_vision_encoder_trains_exports_and_is_analysed(tmp_path):
    folder = vit_folder(tmp_path / "vit")  # made for 32 px; the scenes are 64 px
    cfg = compose_config("train", [*TINY_SCENES, *QUICK, "backbone=hf_vision", f"backbone.model={folder}"],
                         output_dir=tmp_path / "run")
    result = train(cfg)
    shutil.rmtree(folder)
    net = mhc.load(result.last_checkpoint)
    assert (net.processor.mean, net.processor.std) == ([0.4, 0.45, 0.5], [0.2, 0.25, 0.3])
    assert_onnx_matches(net, tmp_path / "export", torch.rand(2, 3, 64, 64))
    heads = analysed_heads(result.last_checkpoint, tmp_path / "analysis")  # on the checkpoint's own data
    assert len(heads) == 2 * 2
