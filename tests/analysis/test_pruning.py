"""Pruning orders and curves; importance-ordered pruning against random pruning."""

import pytest
import torch

import mhc
from mhc.analysis.attention import HeadLayout
from mhc.analysis.pruning import (
    evaluate_heads,
    importance_order,
    mean_random,
    parameter_count,
    pruned_copy,
    pruning_curve,
    pruning_order,
    select_heads,
)


def test_orders_rank_ascending_or_at_random_reproducibly():
    scores = torch.tensor([[0.9, float("nan"), 0.1], [0.5, 0.3, 0.7]])
    assert pruning_order(scores) == [(0, 2), (1, 1), (1, 0), (1, 2), (0, 0)]
    random = pruning_order(scores, "random", seed=3)
    assert sorted(random) == sorted(pruning_order(scores)) and random == pruning_order(scores, "random", seed=3)
    with pytest.raises(ValueError, match="strategy must be one of"):
        pruning_order(scores, "largest")


def test_selection_keeps_a_head_in_every_layer():
    layout = HeadLayout([[0, 1, 2, 3], [0, 1, 2, 3]], 4)
    order = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert select_heads(order, layout, 0.5) == [[0, 1, 2], [0]]
    assert select_heads(order, layout, 0.0) == [[], []]
    with pytest.raises(ValueError, match="fraction must be in"):
        select_heads(order, layout, 1.0)


def test_importance_order_covers_every_removable_head_and_leaves_the_net_alone(trained_sequence_net, sequences):
    before = {k: v.clone() for k, v in trained_sequence_net.state_dict().items()}
    batches = list(sequences.loader("train"))[:2]
    order = importance_order(trained_sequence_net, batches)
    assert len(order) == len(set(order)) == 8 - 2
    assert all(torch.equal(v, trained_sequence_net.state_dict()[k]) for k, v in before.items())
    once = importance_order(trained_sequence_net, batches, recompute_every=0)
    assert sorted(once) != [] and len(once) == 6


def test_pruned_copy_is_smaller_and_saves_and_loads(trained_sequence_net, sequences, tmp_path):
    pruned = pruned_copy(trained_sequence_net, [[0, 3], [1]])
    assert parameter_count(pruned) < parameter_count(trained_sequence_net)
    assert len(trained_sequence_net.backbone.encoder.blocks[0].attn.kept_heads) == 4  # the original is intact
    path = mhc.io.save_checkpoint(pruned, tmp_path / "pruned.ckpt")
    loaded = mhc.load(path)
    tokens = next(iter(sequences.loader("val")))["tokens"]
    assert torch.allclose(loaded(tokens)["first"], pruned(tokens)["first"], atol=1e-6)
    assert loaded.backbone_config["pruned_heads"] == [[0, 3], [1]]


def test_importance_pruning_beats_random_pruning_at_half_the_heads(trained_sequence_net, sequences):
    val = list(sequences.loader("val"))
    accuracy = evaluate_heads(trained_sequence_net, val)
    assert min(v["acc"] for v in accuracy.values()) >= 0.95
    order = importance_order(trained_sequence_net, list(sequences.loader("train"))[:8])
    curve = pruning_curve(trained_sequence_net, val, order, [0.0, 0.5], random_seeds=6)
    by_importance = next(p for p in curve if p.strategy == "importance" and p.fraction == 0.5)
    assert by_importance.heads_pruned == 4
    assert by_importance.mean_accuracy > mean_random(curve, 0.5) + 0.1
    assert by_importance.mean_accuracy >= 0.9
