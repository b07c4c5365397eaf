import os

import pytest
import torch

import mhc
from mhc.errors import CheckpointError
from mhc.io import read_checkpoint, save_checkpoint, save_export
from mhc.model import MultiHeadNet


def write_checkpoint(net, path):
    torch.save({"mhc": {"format": 1, "net": net.config()},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_round_trip(tiny_net, tmp_path):
    model = mhc.load(write_checkpoint(tiny_net, tmp_path / "m.ckpt"))
    x = torch.rand(2, 3, 64, 64)
    assert not model.training
    assert all(torch.equal(model(x)[k], tiny_net(x)[k]) for k in tiny_net.tasks)


def test_export_round_trip(tiny_net, tmp_path):
    folder = save_export(tiny_net, tmp_path / "export")
    model = mhc.load(folder)
    x = torch.rand(2, 3, 64, 64)
    assert all(torch.equal(model(x)[k], tiny_net(x)[k]) for k in tiny_net.tasks)
    assert model.tasks == tiny_net.tasks


def test_pickled_code_is_refused_and_never_runs(tiny_net, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"mhc": {"net": tiny_net.config()}, "state_dict": {}, "payload": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="was refused: it holds pickled objects"):
        mhc.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_is_one_clear_error(tiny_net, tmp_path, damage):
    path = write_checkpoint(tiny_net, tmp_path / "m.ckpt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="is truncated or not a checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty (0 bytes)"),
    (b"hello\n", "is truncated or not a checkpoint (KeyError"),
    (b"\x80", "is truncated or not a checkpoint"),
    (b"PK\x03\x04" + bytes(40), "is truncated or not a checkpoint"),
])
def test_a_file_that_is_no_checkpoint_is_one_line_from_every_reader(tmp_path, content, expected):
    """An empty or text file given as a checkpoint: one line naming it, from mhc.load and the
    commands alike (before: IndexError inside the error handler, or KeyError: 101)."""
    path = tmp_path / "m.ckpt"
    path.write_bytes(content)
    for read in (read_checkpoint, mhc.load):
        with pytest.raises(CheckpointError) as err:
            read(path)
        assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_whose_description_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"mhc": ["net"], "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="is not an mhc checkpoint"):
        read_checkpoint(path)


def test_truncated_safetensors_is_one_clear_error(tiny_net, tmp_path):
    folder = save_export(tiny_net, tmp_path / "export")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is corrupt"):
        mhc.load(folder)


def test_weights_that_do_not_fit_are_named(tiny_net, tmp_path):
    path = write_checkpoint(tiny_net, tmp_path / "m.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["net.heads.coarse.layers.1.weight"] = torch.zeros(7, 16)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="do not fit the described model.*heads.coarse"):
        mhc.load(path)


def test_not_an_mhc_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="is not an mhc checkpoint"):
        mhc.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        mhc.load(tmp_path / "missing.ckpt")


def test_a_description_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    """An edited description claiming a huge model (here a BERT of width 65536 and 200,000 words:
    about 50 GB) next to small weights fails on the meta device, naming the first mismatch."""
    from mhc.processing.processors import TextProcessor
    from mhc.tasks import TaskSpec

    bert = {"model_type": "bert", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32}
    net = MultiHeadNet({"name": "hf", "config": bert, "max_length": 12}, [TaskSpec("a", "multiclass", ["x", "y"])],
                       TextProcessor(max_length=12))
    path = save_checkpoint(net, tmp_path / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["mhc"]["net"]["backbone"]["config"].update(hidden_size=65536, intermediate_size=262144, vocab_size=200000)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"the weights do not fit the described model \(shapes "
                                              r"backbone.model.embeddings.word_embeddings.weight \[30, 16\] vs \[200000, 65536\]\)"):
        mhc.load(path)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# name -> (a change to the stored backbone description, the message in parentheses)
CRAFTED = {
    "a weights file to open": ({"pretrained": "/nowhere/backbone.safetensors"},
                               "the backbone names files to load weights from ['pretrained']; a stored description never does"),
    "a state dict to open": ({"weights": "/nowhere/weights.pt"},
                             "the backbone names files to load weights from ['weights']; a stored description never does"),
    "a Hugging Face model to fetch": ({"name": "hf", "model": "/nowhere/model"},
                                      "backbone 'hf' refused: it has no 'config', so the model's architecture would be "
                                      "read from 'model' (a folder or the hub)"),
    "a file for timm to read": ({"name": "timm", "model": "resnet18", "model_args": {"checkpoint_path": "/nowhere/w.pth"}},
                                "backbone 'timm' refused: model_args ['checkpoint_path'] name files for timm to read"),
    "nesting without end": ({"extra": nested(100)}, "nested deeper than 32 levels"),
    "a size past any memory": ({"widths": [8, 2**40]}, "the integer 1099511627776 is beyond 2147483647"),
    "an unknown backbone": ({"name": "resnet19"}, "unknown backbone 'resnet19'"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_description_is_refused_before_anything_is_built_or_opened(tiny_net, tmp_path, case, monkeypatch):
    change, message = CRAFTED[case]
    path = save_checkpoint(tiny_net, tmp_path / "m.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["mhc"]["net"]["backbone"].update(change)
    torch.save(checkpoint, path)
    monkeypatch.setattr(MultiHeadNet, "from_config", lambda *a: pytest.fail("built from a refused description"))
    with pytest.raises(CheckpointError) as info:
        mhc.load(path)
    assert str(info.value) == f"'{path}' has an invalid model description ({message})"


def test_an_export_description_nested_past_the_parser_is_one_line(tiny_net, tmp_path):
    folder = save_export(tiny_net, tmp_path / "export")
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"config.json is corrupt \(maximum recursion depth exceeded"):
        mhc.load(folder)
