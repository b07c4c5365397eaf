"""Every registered backbone keeps the contract of :class:`mhc.model.backbones.base.Backbone`:
its forward shape, a save/load round trip, export, and each capability it declares."""

from __future__ import annotations

import pytest
import torch

import mhc
from mhc.export import trace
from mhc.io import save_checkpoint
from mhc.model import MultiHeadNet, list_backbones
from mhc.model.backbones import create_backbone, registry
from mhc.model.backbones.base import (
    ATTENTION,
    CAPABILITIES,
    FEATURE_MAP,
    HEAD_PRUNING,
    IMAGE,
    MODALITIES,
    TOKENS,
    Backbone,
    check_backbone,
)
from mhc.model.backbones.registry import describe_backbone
from mhc.pretrain import create_objective
from mhc.processing.processors import ImageProcessor, TextProcessor
from mhc.tasks import TaskSpec

# Small sizes of each registered backbone, so the whole contract runs in seconds; a backbone
# registered later without an entry here runs with its defaults.
SMALL = {
    "cnn": {"widths": [8, 16]},
    "resnet9": {"widths": [8, 8, 16, 16]},
    "airbench": {"widths": [8, 16, 16], "stem": 8},
    "resnet18": {"small_input": True},
    "resnet34": {"small_input": True},
    "resnet50": {"small_input": True},
    "vit_tiny": {"image_size": 32, "dim": 32, "depth": 2, "num_heads": 2},
    "vit_small": {"image_size": 32, "dim": 32, "depth": 2, "num_heads": 4},
    "seq_tiny": {"vocab_size": 20, "max_length": 12, "dim": 32, "depth": 2, "num_heads": 2},
    "seq_small": {"vocab_size": 20, "max_length": 12, "dim": 32, "depth": 1, "num_heads": 4, "pool": "cls"},
    "textcnn": {"vocab_size": 20, "max_length": 12, "dim": 16, "kernel_sizes": [1, 3], "filters": 8},
    "bag": {"vocab_size": 20, "max_length": 12, "dim": 16},
    "timm": {"model": "test_resnet", "pretrained": False},
    "timm_vit": {"name": "timm", "model": "test_vit", "image_size": [32, 32]},  # a second timm model: attention
    "hf": {"config": {"model_type": "bert", "vocab_size": 20, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "intermediate_size": 32, "max_position_embeddings": 16}, "max_length": 12},
    "hf_vision": {"config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "intermediate_size": 32}},
}
TASKS = [TaskSpec("kind", "multiclass", ["a", "b", "c"]), TaskSpec("flag", "binary", ["no", "yes"])]
NAMES = [*list_backbones(), "timm_vit"]  # every registered backbone, and a timm ViT beside the timm CNN


def options(name: str) -> dict:
    return {"name": name, **SMALL.get(name, {})}


def build(name: str) -> Backbone:
    torch.manual_seed(0)
    return create_backbone(**options(name)).eval()


def example(backbone: Backbone, batch: int = 3) -> torch.Tensor:
    """Normalised images, or token ids with padding at the end of the last row."""
    generator = torch.Generator().manual_seed(1)
    if backbone.modality == TOKENS:
        ids = torch.randint(3, backbone.vocab_size, (batch, backbone.max_length), generator=generator)
        ids[-1, backbone.max_length // 2 :] = backbone.pad_id
        return ids
    return torch.randn(batch, 3, 32, 32, generator=generator)


def network(name: str) -> MultiHeadNet:
    backbone = build(name)
    config = options(name)
    processor = TextProcessor(max_length=backbone.max_length) if backbone.modality == TOKENS else ImageProcessor(size=[32, 32])
    torch.manual_seed(0)
    return MultiHeadNet(config, TASKS, processor).eval()


def net_input(net: MultiHeadNet) -> torch.Tensor:
    """Network input: token ids, or images in [0, 1] (the net normalises them)."""
    return example(net.backbone) if net.takes_tokens else torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_backbone_config_is_registered():
    from mhc.config import group_options

    assert set(group_options("backbone")) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_declares_the_contract(name):
    backbone = build(name)
    assert isinstance(backbone, Backbone) and backbone.modality in MODALITIES
    assert set(backbone.capabilities) <= set(CAPABILITIES)
    assert isinstance(backbone.num_features, int) and backbone.num_features > 0
    declared = describe_backbone(options(name))  # read on the meta device, as configs are checked
    assert (declared.modality, declared.capabilities, declared.convolutional, declared.masked_modeling) == (
        backbone.modality, backbone.capabilities, backbone.convolutional, backbone.masked_modeling)
    assert all(p.device.type == "meta" for p in declared.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_pooled_features(name):
    backbone = build(name)
    inputs = example(backbone)
    with torch.no_grad():
        features = backbone(inputs)
    assert features.shape == (len(inputs), backbone.num_features) and torch.isfinite(features).all()


@pytest.mark.parametrize("name", [n for n in NAMES if build(n).modality == TOKENS])
def test_padding_changes_no_feature(name):
    backbone = build(name)
    ids = example(backbone)[:1, : backbone.max_length // 2]
    padded = torch.cat([ids, torch.full_like(ids, backbone.pad_id)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(padded), backbone(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_gives_the_same_logits(name, tmp_path):
    net = network(name)
    inputs = net_input(net)
    path = save_checkpoint(net, tmp_path / "model.ckpt")
    loaded = mhc.load(path)
    with torch.no_grad():
        before, after = net(inputs), loaded(inputs)
    for task in net.tasks:
        torch.testing.assert_close(after[task], before[task], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_exports_with_torch_export(name):
    net = network(name)
    inputs = net_input(net)
    program = trace(net)
    with torch.no_grad():
        exported = program.module()(inputs)
        expected = net(inputs)
    for task, logits in zip(net.tasks, exported):
        torch.testing.assert_close(logits, expected[task], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if FEATURE_MAP in build(n).capabilities])
def test_feature_map_pools_to_the_features(name):
    backbone = build(name)
    inputs = example(backbone)
    with torch.no_grad():
        feature_map = backbone.forward_map(inputs)
        features = backbone(inputs)
    side = inputs.shape[-1] // backbone.reduction
    assert feature_map.shape == (len(inputs), backbone.num_features, side, side)
    pooled = feature_map.amax(dim=(-2, -1)) if backbone.global_pool == "max" else feature_map.mean(dim=(-2, -1))
    torch.testing.assert_close(pooled, features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if ATTENTION in build(n).capabilities])
def test_attention_weights_are_distributions_over_real_keys(name):
    backbone = build(name)
    inputs = example(backbone)
    with torch.no_grad():
        tokens, padding, maps = backbone.forward_tokens(inputs, need_weights=True)
    assert len(maps) == len(backbone.encoder.blocks)
    length = tokens.shape[1]
    if backbone.modality == IMAGE:
        assert padding is None
        assert length == backbone.prefix_tokens + (inputs.shape[-1] // backbone.patch_size) ** 2
    else:
        assert padding.shape == (len(inputs), length) and bool(padding[-1].any()) and not bool(padding[0].any())
    for weights, block in zip(maps, backbone.encoder.blocks):
        assert weights.shape == (len(inputs), block.attn.num_heads, length, length)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        if padding is not None:
            assert float(weights.masked_select(padding[:, None, None, :].expand_as(weights)).abs().max()) == 0.0


@pytest.mark.parametrize("name", [n for n in NAMES if HEAD_PRUNING in build(n).capabilities])
def test_pruning_a_head_equals_gating_it_off(name, tmp_path):
    net = network(name)
    inputs = net_input(net)
    gated = network(name)
    gated.backbone.encoder.blocks[0].attn.head_gate.data[0] = 0.0
    net.prune_heads([[0]] + [[] for _ in net.backbone.encoder.blocks[1:]])
    with torch.no_grad():
        pruned, expected = net(inputs), gated(inputs)
    for task in net.tasks:
        torch.testing.assert_close(pruned[task], expected[task], rtol=1e-5, atol=1e-5)
    assert net.backbone.encoder.blocks[0].attn.num_heads == gated.backbone.encoder.blocks[0].attn.num_heads - 1
    reloaded = mhc.load(save_checkpoint(net, tmp_path / "pruned.ckpt"))  # the pruned shape is in the description
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs)["kind"], pruned["kind"], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if build(n).masked_modeling])
def test_declared_masked_modeling_objectives_train(name):
    backbone = build(name).train()
    inputs = example(backbone)
    for objective_name in backbone.masked_modeling:
        extra = {"mask_id": 2} if objective_name == "masked_tokens" else {}
        if objective_name == "mae":
            extra = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
        objective = create_objective(objective_name, backbone, **extra)
        out = objective(inputs)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
        backbone.zero_grad()


def test_a_backbone_that_breaks_its_declaration_is_refused(monkeypatch):
    class Liar(Backbone):
        capabilities = frozenset({FEATURE_MAP})  # but no forward_map

        def __init__(self) -> None:
            super().__init__()
            self.num_features = 4

    with pytest.raises(TypeError, match=r"declares \['feature_map'\] but lacks \['forward_map', 'reduction'\]"):
        check_backbone(Liar(), "liar")
    with pytest.raises(TypeError, match="unknown capabilities"):
        type("Odd", (Backbone,), {"capabilities": frozenset({"flying"})})
    with pytest.raises(TypeError, match="not a mhc.model.backbones.Backbone"):
        check_backbone(torch.nn.Linear(2, 2), "linear")
    monkeypatch.setitem(registry._REGISTRY, "test_liar", Liar)
    with pytest.raises(TypeError, match="lacks"):
        create_backbone("test_liar")


@pytest.mark.parametrize("name", [n for n in NAMES if ATTENTION in build(n).capabilities])
def test_a_gate_on_the_output_projection_silences_one_head(name):
    """The analysis gates heads where they enter each layer's output projection (``attn.out``):
    a gate of 0 on head 0 of the first layer equals that projection ignoring head 0's inputs."""
    from mhc.analysis.importance import sample_gates

    backbone, silenced = build(name), build(name)
    attn = silenced.encoder.blocks[0].attn
    with torch.no_grad():
        attn.out.weight[:, : attn.head_dim] = 0
    inputs = example(backbone)
    with torch.no_grad(), sample_gates(backbone.encoder, len(inputs), inputs.device) as gates:
        gates[0][:, 0] = 0
        gated = backbone(inputs)
    with torch.no_grad():
        torch.testing.assert_close(gated, silenced(inputs), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(gated, backbone(inputs), atol=1e-4)  # the head mattered
