"""Fine-tuning controls: layer-wise learning-rate decay, frozen depths, and LoRA adapters merged on export."""

from __future__ import annotations

import pytest
import torch

import mhc
from mhc.api import compose_config
from mhc.api.build import build_optimizer
from mhc.errors import ConfigError
from mhc.export import OnnxModel, export_model
from mhc.io import read_export_config
from mhc.processing.processors import ImageProcessor, TextProcessor
from mhc.tasks import TaskSpec, tasks_to_dicts
from mhc.training.module import MultiHeadModule
from mhc.training.schedules import optimization

TASKS = [TaskSpec("kind", "multiclass", ["a", "b", "c"]), TaskSpec("flag", "binary", ["no", "yes"])]
BERT = {"name": "hf", "config": {"model_type": "bert", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16},
        "max_length": 12}
BACKBONES = {
    "timm_vit": {"name": "timm", "model": "test_vit", "image_size": [32, 32]},
    "hf_bert": BERT,
    "vit_tiny": {"name": "vit_tiny", "image_size": 32, "dim": 32, "depth": 2, "num_heads": 2},
}


def module(backbone: dict, **options) -> MultiHeadModule:
    processor = TextProcessor(max_length=12) if backbone["name"] == "hf" else ImageProcessor(size=[32, 32])
    torch.manual_seed(0)
    return MultiHeadModule({"backbone": backbone, "tasks": tasks_to_dicts(TASKS), "processor": processor.to_dict()}, **options)


def inputs(net) -> torch.Tensor:
    if net.takes_tokens:
        return torch.randint(3, 30, (4, 12), generator=torch.Generator().manual_seed(0))
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def train_step(m: MultiHeadModule, lr: float = 0.1) -> None:
    optimizer = optimization(m, lambda groups: torch.optim.SGD(groups, lr=lr), None)
    logits = m.net(inputs(m.net))
    loss = torch.nn.functional.cross_entropy(logits["kind"], torch.tensor([0, 1, 2, 0]))
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits["flag"][:, 0], torch.tensor([0.0, 1, 1, 0]))
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("name", BACKBONES)
def test_layer_decay_scales_each_depth_and_leaves_heads_alone(name):
    m = module(BACKBONES[name], layer_decay=0.5, backbone_lr_scale=0.8)
    optimizer = optimization(m, lambda groups: torch.optim.AdamW(groups, lr=1.0), None)
    depths = m.net.backbone.parameter_depths()
    deepest = max(depths.values())
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for param_name, parameter in m.net.backbone.named_parameters():
        if not parameter.requires_grad:  # e.g. attention-head gates
            continue
        assert lr_of[id(parameter)] == pytest.approx(0.8 * 0.5 ** (deepest - depths[param_name])), param_name
    assert all(lr_of[id(p)] == 1.0 for p in m.net.heads.parameters())
    assert sorted(lr_of) == sorted(id(p) for p in m.parameters() if p.requires_grad)  # each once
    assert deepest >= 2  # embeddings, then at least two blocks


def test_frozen_depths_do_not_change_and_their_batch_norms_keep_statistics():
    m = module({"name": "resnet18", "small_input": True}, backbone_freeze=2)
    depths = m.net.backbone.parameter_depths()
    before = {k: v.clone() for k, v in m.net.backbone.state_dict().items()}
    m.train()
    train_step(m)
    after = m.net.backbone.state_dict()
    for name, _ in m.net.backbone.named_parameters():
        assert torch.equal(after[name], before[name]) == (depths[name] < 2), name
    assert torch.equal(after["net.bn1.running_mean"], before["net.bn1.running_mean"])  # frozen stem
    assert not torch.equal(after["net.layer3.0.bn1.running_mean"], before["net.layer3.0.bn1.running_mean"])


def test_freezing_all_trains_the_heads_only():
    m = module(BACKBONES["timm_vit"], backbone_freeze="all")
    assert not any(p.requires_grad for p in m.net.backbone.parameters())
    assert [g["name"] for g in m.param_groups() if g["params"]] == ["head/kind", "head/flag"]


@pytest.mark.parametrize("freeze", [-1, "some", True, 1.5])
def test_bad_freeze_is_one_config_error(freeze):
    with pytest.raises(ConfigError, match="backbone_freeze must be 0, a positive depth or 'all'"):
        module(BACKBONES["vit_tiny"], backbone_freeze=freeze)


def test_layer_decay_is_an_optimizer_option_checked_up_front(tmp_path):
    cfg = compose_config("train", ["optimizer.layer_decay=0.75"], output_dir=tmp_path)
    factory, decay = build_optimizer(cfg)
    assert decay == 0.75 and isinstance(factory([torch.nn.Parameter(torch.zeros(1))]), torch.optim.AdamW)
    with pytest.raises(ConfigError, match=r"optimizer.layer_decay must be a number in \(0, 1\], got 2"):
        build_optimizer(compose_config("train", ["optimizer.layer_decay=2"], output_dir=tmp_path))


@pytest.mark.parametrize("name", ["timm_vit", "hf_bert"])
def test_lora_trains_adapters_only_and_merges_into_the_same_outputs(name, tmp_path):
    plain = module(BACKBONES[name]).net.eval()
    m = module({**BACKBONES[name], "lora": {"r": 4, "alpha": 8}})
    net = m.net
    trainable = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    x = inputs(net)
    with torch.no_grad():  # LoRA starts as the identity: B is zero
        torch.testing.assert_close(net.eval().forward_features(x), plain.forward_features(x))
    m.train()
    train_step(m, lr=0.5)
    net.eval()
    with torch.no_grad():
        adapted = net(x)
    export_model(net, tmp_path, ["safetensors", "onnx"])
    assert "lora" not in read_export_config(tmp_path)["net"]["backbone"]
    loaded = mhc.load(tmp_path)
    assert not any("lora_" in k for k in loaded.state_dict())
    assert set(loaded.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        merged = loaded(x)
    onnx = OnnxModel(tmp_path).logits(x)
    for task in net.tasks:
        torch.testing.assert_close(merged[task], adapted[task], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(onnx[task], adapted[task], rtol=1e-4, atol=1e-4)
    assert net.backbone_config["lora"]["r"] == 4  # the exported copy was merged, not the model


def test_lora_targets_and_bad_options():
    m = module({**BACKBONES["hf_bert"], "lora": {"r": 2, "targets": ["query", "value"]}})
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in m.net.backbone.named_parameters() if p.requires_grad}
    assert adapted and all(n.endswith((".query", ".value")) for n in adapted)
    with pytest.raises(ConfigError, match="backbone.lora: the backbone has no linear layers to adapt"):
        module({"name": "cnn", "widths": [8, 16], "lora": {"r": 4}})
    with pytest.raises(ConfigError, match=r"backbone.lora: unknown options \['rank'\]"):
        module({**BACKBONES["vit_tiny"], "lora": {"r": 4, "rank": 4}})
    with pytest.raises(ConfigError, match="backbone.lora.r must be a positive integer"):
        module({**BACKBONES["vit_tiny"], "lora": {"r": -2}})
