import pytest
import torch

from mhc.errors import ConfigError
from mhc.model import MultiHeadNet, create_backbone, list_backbones
from mhc.predictor import OutputDecoder


def test_forward_returns_logits_per_task(tiny_net, tasks):
    out = tiny_net(torch.rand(3, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {t.name: (3, t.num_outputs) for t in tasks}


def test_children_decoded_under_predicted_parent(tiny_net):
    logits = tiny_net(torch.rand(32, 3, 64, 64))
    logits["coarse"] = torch.randn(32, 2) * 5
    logits["fine"] = torch.randn(32, 5) * 5
    probs = OutputDecoder(tiny_net.tasks.values()).probabilities(logits)
    coarse = probs["coarse"].argmax(-1)
    fine = probs["fine"].argmax(-1)
    allowed = tiny_net.hierarchy("fine")[coarse]
    assert allowed[torch.arange(32), fine].all()
    assert (probs["fine"][~allowed] == 0).all()


def test_predict_names_and_probabilities(tiny_net):
    images = [torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy() for _ in range(5)]
    out = tiny_net.predict(images, batch_size=2)
    assert len(out["coarse"].labels) == 5 and set(out["coarse"].labels) <= {"a", "b"}
    assert out["flag"].probs.shape == (5, 2)
    assert torch.allclose(out["flag"].probs.sum(-1), torch.ones(5))
    assert all(set(labels) <= {"x", "y", "z"} for labels in out["tags"].labels)
    for coarse, fine in zip(out["coarse"].labels, out["fine"].labels):
        assert fine[0] == coarse  # fine classes a1/a2 only under a, b1..b3 only under b


def test_config_round_trip_rebuilds_same_function(tiny_net):
    clone = MultiHeadNet.from_config(tiny_net.config())
    clone.load_state_dict(tiny_net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    clone.eval()
    for name, value in tiny_net(x).items():
        assert torch.equal(value, clone(x)[name])


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_backbones_give_pooled_features(name):
    backbone = create_backbone(name, **({"small_input": True} if name.startswith("resnet") else {}))
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, backbone.num_features)


def test_registry_lists_and_rejects():
    assert {"cnn", "resnet18", "resnet34", "resnet50"} <= set(list_backbones())
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'"):
        create_backbone("resnet19")


def test_local_backbone_weights(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("cnn", widths=[8, 16])
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = create_backbone("cnn", widths=[8, 16], weights=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


def test_predict_accepts_one_image_and_keeps_mode(tiny_net):
    tiny_net.train()
    out = tiny_net.predict(torch.randint(0, 256, (30, 20, 3), dtype=torch.uint8).numpy())
    assert len(out["coarse"].labels) == 1 and tiny_net.training


def test_given_set_wins_when_parent_prediction_contradicts_it(tiny_net):
    logits = {name: torch.zeros(1, t.num_outputs) for name, t in tiny_net.tasks.items()}
    logits["coarse"] = torch.tensor([[5.0, -5.0]])  # predicts "a", whose fine classes are a1, a2
    given = torch.tensor([[False, False, True, True, False]])  # the data allows only b1, b2
    probs = OutputDecoder(tiny_net.tasks.values()).probabilities(logits, {"fine": given})["fine"]
    assert (probs[~given] == 0).all() and torch.allclose(probs.sum(), torch.tensor(1.0))
