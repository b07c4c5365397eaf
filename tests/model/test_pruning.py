"""Head gates and physical head pruning."""

import pytest
import torch

from mhc.model import MultiHeadNet
from mhc.tasks import TaskSpec

TASKS = [TaskSpec("first", "multiclass", ["a", "b", "c"])]


@pytest.fixture(params=["seq", "vit"])
def net(request):
    torch.manual_seed(0)
    backbone = ({"name": "seq_small", "vocab_size": 20, "max_length": 16, "dim": 32, "depth": 2, "num_heads": 4}
                if request.param == "seq" else
                {"name": "vit_tiny", "dim": 32, "depth": 2, "num_heads": 4, "patch_size": 16})
    return MultiHeadNet(backbone, TASKS).eval()


def inputs(net):
    return torch.randint(1, 20, (3, 9)) if net.backbone_config["name"].startswith("seq") else torch.rand(3, 3, 64, 64)


def test_pruned_model_equals_gated_model_and_is_smaller(net):
    x = inputs(net)
    pruned_heads = [[0, 2], [3]]
    blocks = net.backbone.encoder.blocks
    with torch.no_grad():
        for block, heads in zip(blocks, pruned_heads):
            block.attn.head_gate[heads] = 0.0
    gated = net(x)["first"]
    for block in blocks:
        block.attn.head_gate.data.fill_(1.0)
    size = sum(p.numel() for p in net.parameters())
    net.prune_heads(pruned_heads)
    assert torch.allclose(net(x)["first"], gated, atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) < size
    assert [b.attn.num_heads for b in blocks] == [2, 3]


def test_pruned_model_round_trips_through_its_config(net):
    x = inputs(net)
    net.prune_heads([[1], []])
    net.prune_heads([[3], [0]])  # indices stay the original ones across prunings
    assert net.backbone_config["pruned_heads"] == [[1, 3], [0]]
    clone = MultiHeadNet.from_config(net.config()).eval()
    clone.load_state_dict(net.state_dict())
    assert torch.allclose(clone(x)["first"], net(x)["first"], atol=1e-6)


def test_gate_gradients_measure_head_importance(net):
    x = inputs(net)
    attn = net.backbone.encoder.blocks[0].attn
    attn.head_gate.requires_grad_(True)
    net(x)["first"].sum().backward()
    assert attn.head_gate.grad.shape == (4,) and attn.head_gate.grad.abs().sum() > 0


def test_pruning_every_head_is_refused(net):
    with pytest.raises(ValueError, match="cannot prune every head"):
        net.prune_heads([[0, 1, 2, 3], []])
