import json

import numpy as np
import onnxruntime
import pytest
import torch

import mhc
from mhc.errors import CheckpointError, ConfigError, DataError
from mhc.export import (
    FORMATS,
    ExportError,
    OnnxModel,
    data_text,
    export_checkpoint,
    export_model,
    parse_formats,
    predict_onnx,
    with_article,
)
from mhc.io import save_checkpoint
from mhc.model import MultiHeadNet
from mhc.processing.processors import ImageProcessor, TextProcessor
from mhc.processing.tokenizer import CharTokenizer
from mhc.tasks import TaskSpec

ALL = ["safetensors", "onnx", "torch_export"]
CNN = {"name": "cnn", "widths": [8, 16], "stem_stride": 2}
VIT = {"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2}
SEQ = {"name": "seq_tiny", "vocab_size": 21, "max_length": 32, "dim": 32, "depth": 1, "num_heads": 2}
CHARS = "abcdefghijklmnopqr"  # 3 reserved ids + 18 characters = vocab_size 21
METRICS = {"coarse": {"acc": 0.875, "f1": 0.8125, "loss": 0.25}, "flag": {"acc": 0.5, "auroc": 0.625}}


def build(backbone, tasks):
    torch.manual_seed(0)
    if backbone["name"].startswith("seq"):
        processor = TextProcessor(CharTokenizer(CHARS), 32)
    else:
        processor = ImageProcessor(size=[backbone.get("image_size", 32)] * 2)
    return MultiHeadNet(backbone, tasks, processor).eval()


def graph_inputs(net, batch, length=32):
    """Images, or token ids with the first row padded after half its length."""
    if not net.takes_tokens:
        return torch.rand(batch, 3, *net.processor.size)
    ids = torch.randint(3, 21, (batch, length))
    ids[0, length // 2 :] = 0
    return ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{backbone: (net, folder)}, each exported once in every format."""
    tasks = [TaskSpec("coarse", "multiclass", ["a", "b"]),
             TaskSpec("fine", "multiclass", ["a1", "a2", "b1"], parent="coarse", allowed_by_parent={"a": ["a1", "a2"], "b": ["b1"]}),
             TaskSpec("flag", "binary", ["no", "yes"]), TaskSpec("tags", "multilabel", ["x", "y", "z"])]
    out = {}
    for backbone in (CNN, VIT, SEQ):
        net = build(backbone, tasks)
        out[backbone["name"]] = net, export_model(net, tmp_path_factory.mktemp(backbone["name"]), ALL, metrics=METRICS)
    return out


@pytest.mark.parametrize("name", ["cnn", "vit_tiny", "seq_tiny"])
def test_onnx_matches_pytorch_at_any_batch_size(exported, name):
    net, folder = exported[name]
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input" and isinstance(graph_input.shape[0], str)  # dynamic batch
    assert [o.name for o in session.get_outputs()] == list(net.tasks)
    shapes = [(1, 32), (5, 32), (3, 9)] if net.takes_tokens else [(1, None), (5, None)]
    for batch, length in shapes:
        x = graph_inputs(net, batch, length or 32)
        outputs = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = net(x)
        for task, out in zip(net.tasks, outputs):
            np.testing.assert_allclose(out, expected[task].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["cnn", "vit_tiny", "seq_tiny"])
def test_torch_export_reloads_and_matches(exported, name):
    net, folder = exported[name]
    program = torch.export.load(str(folder / "model.pt2")).module()
    for batch in (1, 4):
        x = graph_inputs(net, batch)
        with torch.no_grad():
            outputs, expected = program(x), net(x)
        assert len(outputs) == len(net.tasks)
        for task, out in zip(net.tasks, outputs):
            torch.testing.assert_close(out, expected[task], atol=1e-5, rtol=0)


def test_onnx_predictions_equal_mhc_load(exported):
    net, folder = exported["cnn"]
    images = torch.rand(3, 3, 40, 40)  # resized to 32x32 by both paths
    expected = mhc.load(folder).predict(images)
    probs = predict_onnx(folder, images)
    assert set(probs) == set(net.tasks)
    for task, p in probs.items():
        torch.testing.assert_close(p, expected[task].probs, atol=1e-5, rtol=0)


def test_onnx_predicts_text_with_the_saved_tokenizer(exported):
    _, folder = exported["seq_tiny"]
    texts = ["abc", "rqponmlk", "zz"]  # 'z' is unknown to the tokenizer
    expected = mhc.load(folder).predict(texts)
    predicted = OnnxModel(folder).predict(texts)
    for task, prediction in predicted.items():
        assert prediction.labels == expected[task].labels
        torch.testing.assert_close(prediction.probs, expected[task].probs, atol=1e-5, rtol=0)


def test_token_ids_outside_the_vocabulary_or_too_long_are_refused_by_torch_and_onnx_alike(exported):
    net, folder = exported["seq_tiny"]
    vocab = net.backbone.vocab_size
    ids = torch.ones(2, 8, dtype=torch.long)
    ids[1, 5] = vocab
    message = f"input 1: token id {vocab} at position 5 is outside the model's vocabulary of {vocab} ids (0 to {vocab - 1})"
    for model in (mhc.load(folder), OnnxModel(folder)):
        with pytest.raises(DataError) as info:
            model.predict(ids)
        assert str(info.value) == message
    with pytest.raises(DataError, match="^token ids of length 40; this model reads at most 32$"):
        OnnxModel(folder).logits(torch.ones(1, 40, dtype=torch.long))


def test_config_json_records_files_and_graph_names(exported):
    net, folder = exported["seq_tiny"]
    config = json.loads((folder / "config.json").read_text())
    assert config["files"] == ["model.safetensors", "model.onnx", "model.pt2", "config.json", "README.md"]
    assert all((folder / name).is_file() for name in config["files"])
    assert config["input"] == {"name": "input", "dtype": "int64", "shape": ["batch", "length"], "max_length": 32, "pad_id": 0,
                               "vocab_size": net.backbone.vocab_size}
    assert config["onnx"]["input"] == "input" and list(config["onnx"]["outputs"]) == list(net.tasks)
    assert config["onnx"]["outputs"]["fine"] == ["batch", 3]
    assert config["net"]["processor"]["tokenizer"]["kind"] == "char"


def test_model_card_names_tasks_metrics_and_usage(exported):
    net, folder = exported["cnn"]
    card = (folder / "README.md").read_text()
    for task in net.tasks.values():
        assert f"| {task.name} | {task.kind} | {', '.join(task.classes)} |" in card
    assert "| task | acc | f1 | auroc | loss |" in card
    assert "| coarse | 0.8750 | 0.8125 | - | 0.2500 |" in card
    assert f"{sum(p.numel() for p in net.parameters()):,} parameters" in card
    assert "float32 `[batch, 3, 32, 32]`" in card
    assert card.startswith(f"# Multi-head classifier: {len(net.tasks)} tasks on a `cnn` backbone")
    assert with_article("airbench") == "an `airbench`" and with_article("vit_tiny") == "a `vit_tiny`"
    assert "mhc.load(" in card and "torch.export.load" in card
    assert "does not record its training configuration" in card


def test_the_data_section_leaves_out_the_options_of_the_other_input_kind():
    run_config = {"data": {"_target_": "mhc.data.ManifestDataModule", "image_size": [64, 64], "batch_size": 32,
                           "cache": "auto", "tokenizer": "char", "max_length": 128}}
    images, texts = data_text(run_config), data_text(run_config, takes_tokens=True)
    assert "`batch_size`: `32`" in images and "`cache`" in images and "tokenizer" not in images and "max_length" not in images
    assert "`tokenizer`: `char`" in texts and "`max_length`: `128`" in texts and "cache" not in texts


def test_load_of_export_equals_load_of_checkpoint(tiny_net, tmp_path):
    run_config = {"data": {"_target_": "mhc.data.ScenesDataModule", "num_train": 96}, "seed": 3}
    ckpt = save_checkpoint(tiny_net, tmp_path / "run" / "checkpoints" / "last.ckpt", metrics=METRICS)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["mhc"]["config"] = run_config
    torch.save(checkpoint, ckpt)
    folder = export_checkpoint(ckpt, tmp_path / "export")
    from_folder, from_ckpt = mhc.load(folder), mhc.load(ckpt)
    x = torch.rand(4, 3, 64, 64)
    assert all(torch.equal(from_folder(x)[t], from_ckpt(x)[t]) for t in tiny_net.tasks)
    card = (folder / "README.md").read_text()
    assert "`mhc.data.ScenesDataModule`" in card and "- `num_train`: `96`" in card and "seed: 3" in card
    assert json.loads((folder / "config.json").read_text())["source"] == {"checkpoint": str(ckpt), "metrics": METRICS}


def test_reexport_replaces_files_and_leaves_no_temporaries(tiny_net, tmp_path):
    folder = export_model(tiny_net, tmp_path / "export", ["onnx", "torch_export"])
    assert not (folder / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"has no model.safetensors \(it holds model.onnx, model.pt2"):
        mhc.load(folder)
    export_model(tiny_net, folder, ["safetensors"])
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["files"] == ["model.safetensors", "config.json", "README.md"]
    with pytest.raises(CheckpointError, match="has no model.onnx; export with format=onnx"):
        OnnxModel(folder)


def test_truncated_safetensors_is_one_line_error(tiny_net, tmp_path):
    folder = export_model(tiny_net, tmp_path / "export")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated") as info:
        mhc.load(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89\xff garbage \x00", "config.json is corrupt"),
    (b'{"net": ', "config.json is corrupt"),
    (b"[1, 2]", "holds no model description"),
    (b'{"net": {"backbone": {"name": "no_such_net"}, "tasks": []}}', "invalid model description"),
])
def test_bad_config_json_is_one_line_error(tiny_net, tmp_path, content, message):
    folder = export_model(tiny_net, tmp_path / "export")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        mhc.load(folder)
    assert "\n" not in str(info.value)


def test_formats_are_checked():
    assert parse_formats("onnx") == ["onnx"]
    assert parse_formats(["torch_export", "safetensors", "onnx"]) == list(FORMATS)
    with pytest.raises(ConfigError, match=r"format: expected one or more of \['safetensors', 'onnx', 'torch_export'\], got 'tflite'"):
        parse_formats(["onnx", "tflite"])


def test_a_graph_that_cannot_be_traced_is_one_clear_error(tmp_path):
    net = build(CNN, [TaskSpec("input", "binary", ["no", "yes"])])
    with pytest.raises(ExportError, match="task 'input' has the name of the graph input"):
        export_model(net, tmp_path / "export", ["onnx"])


def test_a_backbone_torch_export_cannot_trace_is_named(tmp_path, monkeypatch):
    net = build(CNN, [TaskSpec("flag", "binary", ["no", "yes"])])
    features = net.backbone.forward
    monkeypatch.setattr(net.backbone, "forward", lambda x: features(x) if x.sum() > 0 else -features(x))  # data-dependent
    with pytest.raises(ExportError, match=r"torch.export cannot trace backbone 'cnn' with a dynamic batch \(.*\); export format=safetensors"):
        export_model(net, tmp_path / "export", ["torch_export"])
    assert not (tmp_path / "export" / "config.json").exists()
