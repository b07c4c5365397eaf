"""Head importance (Michel et al. 2019): exact per-sample gate gradients."""

import pytest
import torch

from mhc.analysis.importance import combined_importance, head_importance
from mhc.errors import ConfigError
from mhc.model import MultiHeadNet
from mhc.tasks import TaskSpec

TASKS = [TaskSpec("first", "multiclass", ["a", "b", "c"]), TaskSpec("flag", "binary", ["no", "yes"])]


@pytest.fixture
def net():
    torch.manual_seed(0)
    backbone = {"name": "seq_tiny", "vocab_size": 20, "max_length": 16, "dim": 32, "depth": 2, "num_heads": 4}
    return MultiHeadNet(backbone, TASKS)


def batch(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 20, (n, 10), generator=g)
    tokens[0, 7:] = 0  # padding
    targets = {"first": torch.randint(0, 3, (n,), generator=g), "flag": torch.randint(0, 2, (n,), generator=g).float()}
    label_mask = {"first": torch.ones(n, dtype=torch.bool), "flag": torch.ones(n, dtype=torch.bool)}
    label_mask["flag"][1] = False  # a missing label: no gradient, not counted
    return {"tokens": tokens, "targets": targets, "label_mask": label_mask}


def gate_gradients(net, sample: dict, task: str) -> torch.Tensor:
    """|dL/dxi| of one sample through the model's own head gates, layer by layer."""
    gates = [b.attn.head_gate for b in net.backbone.encoder.blocks]
    for gate in gates:
        gate.requires_grad_(True)
    from mhc.losses import batch_losses

    loss = batch_losses(net.tasks, net.hierarchy, net(sample["tokens"]), sample)[task]
    grads = torch.autograd.grad(loss, gates)
    for gate in gates:
        gate.requires_grad_(False)
    return torch.stack([g.abs() for g in grads])


def test_importance_is_the_mean_of_per_sample_absolute_gate_gradients(net):
    data = batch(5)
    scores = head_importance(net.eval(), [data], normalise=False)
    for task in ("first", "flag"):
        labelled = torch.nonzero(data["label_mask"][task]).flatten().tolist()
        singles = [
            gate_gradients(net, {k: ({t: v[i : i + 1] for t, v in d.items()} if isinstance(d, dict) else d[i : i + 1])
                                 for k, d in data.items()}, task)
            for i in labelled
        ]
        assert torch.allclose(scores[task], torch.stack(singles).mean(0), atol=1e-6)


def test_importance_is_normalised_per_layer_and_leaves_the_model_as_it_was(net):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = head_importance(net, [batch(6), batch(6, seed=1)])
    for values in scores.values():
        assert values.shape == (2, 4)
        assert torch.allclose(values.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())


def test_pruned_heads_have_no_importance(net):
    net.prune_heads([[1, 3], []])
    scores = head_importance(net, [batch(4)])
    assert torch.isnan(scores["first"][0, [1, 3]]).all()
    assert not torch.isnan(scores["first"][0, [0, 2]]).any()


def test_combined_ranking_and_errors(net):
    scores = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 0.5]])}
    assert torch.equal(combined_importance(scores), torch.tensor([[1.0, 0.5]]))
    assert torch.equal(combined_importance(scores, reduce="mean"), torch.tensor([[0.5, 0.25]]))
    assert torch.equal(combined_importance(scores, "b"), scores["b"])
    with pytest.raises(ValueError, match="no importance for task 'c'"):
        combined_importance(scores, "c")
    cnn = MultiHeadNet({"name": "cnn", "widths": [8]}, TASKS)
    with pytest.raises(ConfigError, match="not a transformer"):
        head_importance(cnn, [])
