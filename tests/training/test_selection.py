"""Per-head selection and early stopping: the tracker, and the swap logic on a model whose
validation is a known function of its heads (a real run: tests/api/test_head_selection.py)."""

from __future__ import annotations

import types

import pytest
import torch

from mhc.errors import ConfigError
from mhc.training.selection import HeadEarlyStopping, HeadSelection, HeadTracker, swap_in_best_heads


def test_the_tracker_follows_each_heads_best_in_its_direction():
    tracker = HeadTracker("acc", min_delta=0.01)
    assert tracker.update({"a": {"acc": 0.5}, "b": {"acc": 0.2}}, 0) == ["a", "b"]
    assert tracker.update({"a": {"acc": 0.505}, "b": {"acc": 0.3}}, 1) == ["b"]  # a: under min_delta
    assert tracker.best == {"a": 0.5, "b": 0.3} and tracker.epoch == {"a": 0, "b": 1}
    losses = HeadTracker("loss")
    assert losses.mode == "min" and losses.update({"a": {"loss": 1.0}}, 0) == ["a"]
    assert losses.update({"a": {"loss": 1.5}}, 1) == [] and losses.update({"a": {"loss": 0.5}}, 2) == ["a"]
    with pytest.raises(ConfigError, match="mode: expected max or min, got 'up'"):
        HeadTracker("acc", "up")


def fake_module(weights: dict[str, float]):
    """Heads of one weight each, whose validation accuracy is that weight (a known function)."""
    heads = torch.nn.ModuleDict({task: torch.nn.Linear(1, 1, bias=False) for task in weights})
    for task, w in weights.items():
        heads[task].weight.data.fill_(w)
    module = types.SimpleNamespace(net=types.SimpleNamespace(heads=heads), tasks=dict.fromkeys(weights))

    def validate():
        return {task: {"acc": head.weight.item()} for task, head in heads.items()}

    return module, validate


@pytest.mark.parametrize("swap", ["better", "never"])
def test_a_heads_own_best_weights_are_kept_only_where_validation_improves(swap):
    module, validate = fake_module({"a": 0.5, "b": 0.5, "c": 0.5})
    selection = HeadSelection("acc", swap=swap)
    selection.tracker.epoch = {"a": 1, "b": 2, "c": 3}  # c peaked with the checkpoint's epoch
    selection.weights = {"a": {"weight": torch.tensor([[0.7]])}, "b": {"weight": torch.tensor([[0.3]])},
                         "c": {"weight": torch.tensor([[0.9]])}}
    report = swap_in_best_heads(module, selection, best_epoch=3, baseline=validate(), validate=validate)
    assert report["a"]["swapped"] == pytest.approx(0.7) and report["b"]["swapped"] == pytest.approx(0.3)
    assert report["c"]["swapped"] is None  # its best epoch is the checkpoint's: nothing to swap
    assert report["a"]["kept"] is (swap == "better") and report["b"]["kept"] is False
    final = validate()
    assert final["a"]["acc"] == pytest.approx(0.7 if swap == "better" else 0.5)
    assert final["b"]["acc"] == pytest.approx(0.5) and final["c"]["acc"] == pytest.approx(0.5)


def test_early_stopping_stops_once_every_head_has_waited_out_its_own_patience():
    stopping = HeadEarlyStopping("acc", patience=1, patience_per_head={"b": 2})
    trainer = types.SimpleNamespace(state=types.SimpleNamespace(fn="fit"), sanity_checking=False, should_stop=False,
                                    current_epoch=0, global_step=0, loggers=[])
    module = types.SimpleNamespace(tasks=dict.fromkeys("ab"), last_results={})
    a = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]  # best at epoch 1: waited out (1) at epoch 2
    b = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3]  # best at epoch 2: waited out (2) at epoch 4
    stopped_at = None
    for epoch, (acc_a, acc_b) in enumerate(zip(a, b)):
        trainer.current_epoch = epoch
        module.last_results = {"val": {"a": {"acc": acc_a}, "b": {"acc": acc_b}}}
        stopping.on_validation_end(trainer, module)
        if trainer.should_stop and stopped_at is None:
            stopped_at = epoch
    assert stopped_at == 4 and stopping.tracker.epoch == {"a": 1, "b": 2}


def test_bad_selection_options_fail_clearly():
    with pytest.raises(ConfigError, match="swap: expected better or never, got 'always'"):
        HeadSelection(swap="always")
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        HeadEarlyStopping(patience=0)
