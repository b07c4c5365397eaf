"""A token model that carries its tokenizer: predict on strings, save and load it with the net."""

from __future__ import annotations

import json

import pytest
import torch

import mhc
from mhc.errors import CheckpointError, DataError
from mhc.model import MultiHeadNet
from mhc.model.net import backbone_takes_tokens
from mhc.predictor import OutputDecoder
from mhc.processing.processors import TextProcessor
from mhc.processing.tokenizer import CharTokenizer
from mhc.tasks import TaskSpec

TASKS = [TaskSpec("topic", "multiclass", ["billing", "hardware", "other"]), TaskSpec("urgent", "binary", ["no", "yes"])]


@pytest.fixture
def text_net() -> MultiHeadNet:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.fit(["the printer is on fire", "refund my order"])
    backbone = {"name": "seq_tiny", "vocab_size": len(tokenizer), "max_length": 12, "dim": 16, "depth": 1}
    return MultiHeadNet(backbone, TASKS, TextProcessor(tokenizer, 12)).eval()


def test_predict_on_strings_encodes_with_the_saved_tokenizer(text_net):
    texts = ["printer on fire", "refund please", "z"]
    out = text_net.predict(texts, batch_size=2)
    ids = text_net.tokenizer.encode(texts, max_length=12)
    expected = OutputDecoder(TASKS).probabilities(text_net(ids))
    assert torch.allclose(out["topic"].probs, expected["topic"]) and out["urgent"].probs.shape == (3, 2)
    assert out["topic"].labels == [TASKS[0].classes[i] for i in expected["topic"].argmax(-1).tolist()]
    assert text_net.predict("z")["topic"].labels == out["topic"].labels[2:]  # one string: a batch of one
    assert torch.allclose(text_net.predict(ids)["topic"].probs, out["topic"].probs)  # ids as they are


def test_tokenizer_round_trips_through_checkpoint_and_export(text_net, tmp_path):
    assert text_net.config()["processor"]["tokenizer"] == text_net.tokenizer.to_dict()
    torch.save({"mhc": {"format": 1, "net": text_net.config()},
                "state_dict": {f"net.{k}": v for k, v in text_net.state_dict().items()}}, tmp_path / "m.ckpt")
    folder = mhc.save_export(text_net, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["net"]["processor"]["tokenizer"]["kind"] == "char"
    texts = ["fire!", "my order"]
    for loaded in (mhc.load(tmp_path / "m.ckpt"), mhc.load(folder)):
        assert loaded.tokenizer.to_dict() == text_net.tokenizer.to_dict()
        assert torch.equal(loaded.predict(texts)["topic"].probs, text_net.predict(texts)["topic"].probs)


def test_wrong_input_kind_is_one_data_error(text_net, tiny_net):
    with pytest.raises(DataError, match="this model reads text \\(char tokenizer\\); got ndarray, expected a string"):
        text_net.predict([torch.rand(3, 8, 8).numpy()])
    with pytest.raises(DataError, match="this model reads text \\(char tokenizer\\); got Tensor"):
        text_net.predict(torch.rand(2, 3, 8, 8))
    with pytest.raises(DataError, match="image 'printer on fire' not found; this model reads images .* no tokenizer for text"):
        tiny_net.predict(["printer on fire"])
    untokenized = MultiHeadNet({"name": "seq_tiny", "vocab_size": 20, "max_length": 8, "dim": 16, "depth": 1}, TASKS)
    with pytest.raises(DataError, match="reads token ids and has no saved tokenizer for text"):
        untokenized.predict("a0 b1")
    with pytest.raises(DataError, match="text 0 is empty"):
        text_net.predict("")


def test_bad_saved_tokenizer_is_a_checkpoint_error(text_net, tmp_path):
    config = text_net.config()
    config["processor"]["tokenizer"] = {"kind": "char", "vocab": ["a", "b"]}
    torch.save({"mhc": {"format": 1, "net": config}, "state_dict": {}}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="bad.ckpt' has an invalid model description \\(invalid char tokenizer"):
        mhc.load(tmp_path / "bad.ckpt")


def test_backbone_takes_tokens_without_building_weights():
    assert backbone_takes_tokens({"name": "seq_tiny", "vocab_size": 10**7})  # meta device: no memory spent
    assert not backbone_takes_tokens({"name": "resnet50", "weights": "nowhere.safetensors"})
