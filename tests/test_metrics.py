import pytest
import torch

from mhc.metrics import HeadMetrics, flatten_results, task_metrics
from mhc.tasks import TaskSpec

TASKS = {
    "multi": TaskSpec("multi", "multiclass", list("abcd"), masked=True),
    "flag": TaskSpec("flag", "binary", ["no", "yes"], masked=True),
    "tags": TaskSpec("tags", "multilabel", list("xyz"), masked=True),
}


def random_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    probs = {
        "multi": torch.rand(n, 4, generator=g).softmax(-1),
        "flag": torch.rand(n, generator=g),
        "tags": torch.rand(n, 3, generator=g),
    }
    targets = {
        "multi": torch.randint(0, 4, (n,), generator=g),
        "flag": (torch.rand(n, generator=g) < 0.5).float(),
        "tags": (torch.rand(n, 3, generator=g) < 0.5).float(),
    }
    masks = {name: torch.rand(n, generator=g) < 0.6 for name in TASKS}
    return probs, targets, masks


def test_masked_metrics_equal_metrics_on_labelled_subset():
    metrics = HeadMetrics(TASKS)
    subsets = {}
    for seed in range(3):
        probs, targets, masks = random_batch(40, seed)
        metrics.update(probs, targets, masks)
        for name in TASKS:
            subsets.setdefault(name, []).append((probs[name][masks[name]], targets[name][masks[name]].long()))
    results = metrics.compute()
    for name, task in TASKS.items():
        reference = task_metrics(task)
        for p, y in subsets[name]:
            reference.update(p, y)
        expected = {k: float(v) for k, v in reference.compute().items()}
        assert results[name] == pytest.approx(expected, abs=1e-6)


def test_fully_masked_batches_are_skipped_and_unseen_tasks_left_out():
    metrics = HeadMetrics(TASKS)
    probs, targets, masks = random_batch(16, 0)
    masks["flag"] = torch.zeros(16, dtype=torch.bool)
    metrics.update(probs, targets, masks)
    results = metrics.compute()
    assert "flag" not in results and {"multi", "tags"} <= set(results)
    assert all(0.0 <= v <= 1.0 for values in results.values() for v in values.values())


def test_flatten_adds_means_over_heads():
    flat = flatten_results({"a": {"acc": 0.5, "f1": 0.2}, "b": {"acc": 1.0, "f1": 0.4, "auroc": 0.9}}, "val")
    assert flat["val/a/acc"] == 0.5
    assert flat["val/mean/acc"] == 0.75 and flat["val/mean/f1"] == pytest.approx(0.3)
    assert flat["val/mean/auroc"] == 0.9


def test_task_loss_averages_over_labelled_samples_only():
    metrics = HeadMetrics(TASKS)
    probs, targets, masks = random_batch(10, 0)
    masks = {name: torch.tensor([True] * 2 + [False] * 8) for name in TASKS}
    metrics.update(probs, targets, masks, losses={name: torch.tensor(1.0) for name in TASKS})
    masks = {name: torch.tensor([True] * 6 + [False] * 4) for name in TASKS}
    metrics.update(probs, targets, masks, losses={name: torch.tensor(3.0) for name in TASKS})
    assert metrics.compute()["multi"]["loss"] == pytest.approx((2 * 1.0 + 6 * 3.0) / 8)
