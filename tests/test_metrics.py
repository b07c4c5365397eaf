import pytest
import torch

from mhc.metrics import HeadMetrics, flatten_results, per_class_scores, task_metrics
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


def test_delta_m_is_the_mean_relative_gain_and_respects_lower_is_better():
    from mhc.metrics import delta_m

    results = {"a": {"acc": 0.9, "loss": 0.5}, "b": {"acc": 0.4, "loss": 2.0}, "c": {"acc": 0.7}}
    baseline = {"a": 0.75, "b": 0.5}  # c has no baseline: left out
    assert delta_m(results, baseline) == pytest.approx(100 * (0.2 - 0.2) / 2)
    assert delta_m({"a": {"acc": 0.9}}, {"a": 0.75}) == pytest.approx(20.0)
    assert delta_m(results, {"a": 1.0, "b": 1.0}, metric="loss") == pytest.approx(100 * (0.5 - 1.0) / 2)


def test_baseline_metrics_from_mapping_and_checkpoint(tiny_net, tmp_path):
    from mhc.api.build import baseline_metrics
    from mhc.errors import ConfigError
    from mhc.io import save_checkpoint

    assert baseline_metrics({"a": 0.5, "b": {"acc": 0.25}}) == {"a": 0.5, "b": 0.25}
    path = save_checkpoint(tiny_net, tmp_path / "m.ckpt", metrics={"coarse": {"acc": 0.8, "f1": 0.7}})
    assert baseline_metrics(str(path)) == {"coarse": 0.8}
    with pytest.raises(ConfigError, match="holds no validation 'auroc' per task"):
        baseline_metrics(str(path), "auroc")


def test_training_stage_metrics_leave_auroc_out_and_agree_on_the_rest():
    full, light = HeadMetrics(TASKS), HeadMetrics(TASKS, auroc=False)
    for seed in range(2):
        batch = random_batch(30, seed)
        full.update(*batch)
        light.update(*batch)
    full_results, light_results = full.compute(), light.compute()
    assert "auroc" in full_results["flag"] and "auroc" not in light_results["flag"]
    for name, values in light_results.items():
        assert values == pytest.approx({k: v for k, v in full_results[name].items() if k != "auroc"}, abs=1e-7)


@pytest.mark.parametrize("auroc", [True, False])
def test_binary_heads_measured_together_equal_each_head_alone(auroc):
    """Several binary heads share one multilabel accuracy/F1 that ignores masked samples; every
    head's figures equal its own binary metrics on its labelled subset, fully masked batches
    and heads that never saw a label included."""
    tasks = {f"b{i}": TaskSpec(f"b{i}", "binary", ["no", "yes"], masked=True) for i in range(4)}
    tasks["multi"] = TASKS["multi"]
    metrics, subsets = HeadMetrics(tasks, auroc=auroc), {}
    g = torch.Generator().manual_seed(0)
    for batch in range(3):
        probs = {name: torch.rand(24, generator=g) for name in tasks}
        probs["multi"] = torch.rand(24, 4, generator=g).softmax(-1)
        targets = {name: (torch.rand(24, generator=g) < 0.4).float() for name in tasks}
        targets["multi"] = torch.randint(0, 4, (24,), generator=g)
        masks = {name: torch.rand(24, generator=g) < 0.7 for name in tasks}
        masks["b2"] = torch.zeros(24, dtype=torch.bool) if batch else masks["b2"]  # labelled in the first batch only
        masks["b3"] = torch.zeros(24, dtype=torch.bool)  # never labelled
        metrics.update(probs, targets, masks)
        for name in tasks:
            subsets.setdefault(name, []).append((probs[name][masks[name]], targets[name][masks[name]].long()))
    results = metrics.compute()
    assert set(results) == {"b0", "b1", "b2", "multi"}
    for name in results:
        reference = task_metrics(tasks[name], auroc=auroc)
        for p, y in subsets[name]:
            if len(y):
                reference.update(p, y)
        expected = {k: float(v) for k, v in reference.compute().items()}
        assert results[name] == pytest.approx(expected, abs=1e-6), name


def feed(metrics: HeadMetrics, batches: int = 3) -> dict[str, tuple[list, list]]:
    """Update ``metrics`` with random batches; each task's labelled probabilities and targets."""
    seen = {name: ([], []) for name in TASKS}
    for seed in range(batches):
        probs, targets, masks = random_batch(60, seed)
        metrics.update(probs, targets, masks)
        for name in TASKS:
            seen[name][0].append(probs[name][masks[name]])
            seen[name][1].append(targets[name][masks[name]])
    return seen


def test_every_metric_equals_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    metrics = HeadMetrics(TASKS)
    seen = feed(metrics)
    results = metrics.compute()
    p, y = (torch.cat(part).numpy() for part in seen["multi"])
    assert results["multi"]["acc"] == pytest.approx(accuracy_score(y, p.argmax(-1)), abs=1e-6)
    assert results["multi"]["f1"] == pytest.approx(f1_score(y, p.argmax(-1), average="macro"), abs=1e-6)
    p, y = (torch.cat(part).numpy() for part in seen["flag"])
    assert results["flag"]["acc"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-6)
    assert results["flag"]["f1"] == pytest.approx(f1_score(y, p >= 0.5), abs=1e-6)
    assert results["flag"]["auroc"] == pytest.approx(roc_auc_score(y, p), abs=0.01)  # binned thresholds
    p, y = (torch.cat(part).numpy() for part in seen["tags"])
    assert results["tags"]["acc"] == pytest.approx(((p >= 0.5) == y).mean(), abs=1e-6)  # label-wise accuracy
    assert results["tags"]["f1"] == pytest.approx(f1_score(y, p >= 0.5, average="macro"), abs=1e-6)
    assert results["tags"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=0.01)


def test_binary_and_multilabel_heads_decide_at_their_thresholds_and_rank_unchanged():
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    tuned = {"multi": TASKS["multi"], "flag": TaskSpec("flag", "binary", ["no", "yes"], masked=True, thresholds=[0.7]),
             "tags": TaskSpec("tags", "multilabel", list("xyz"), masked=True, thresholds=[0.2, 0.5, 0.8])}
    metrics = HeadMetrics(TASKS, confusion=True)
    metrics.use_tasks(tuned.values())  # as a calibrated module hands them over
    seen = feed(metrics)
    results = metrics.compute()
    p, y = (torch.cat(part).numpy() for part in seen["flag"])
    assert results["flag"]["acc"] == pytest.approx(accuracy_score(y, p >= 0.7), abs=1e-6)
    assert results["flag"]["f1"] == pytest.approx(f1_score(y, p >= 0.7), abs=1e-6)
    assert results["flag"]["auroc"] == pytest.approx(roc_auc_score(y, p), abs=0.01)
    p, y = (torch.cat(part).numpy() for part in seen["tags"])
    decided = p >= [0.2, 0.5, 0.8]
    assert results["tags"]["f1"] == pytest.approx(f1_score(y, decided, average="macro"), abs=1e-6)
    matrices = metrics.confusion_matrices()
    rows = per_class_scores(tuned["tags"], matrices["tags"])
    precision, recall, f1, support = precision_recall_fscore_support(y, decided, zero_division=0)
    assert [r["f1"] for r in rows] == pytest.approx(f1.tolist()) and [r["support"] for r in rows] == support.tolist()
    assert [r["precision"] for r in rows] == pytest.approx(precision.tolist())
    p, y = (torch.cat(part).numpy() for part in seen["multi"])
    rows = per_class_scores(TASKS["multi"], matrices["multi"])
    precision, recall, f1, support = precision_recall_fscore_support(y, p.argmax(-1), labels=range(4), zero_division=0)
    assert [r["recall"] for r in rows] == pytest.approx(recall.tolist()) and [r["class"] for r in rows] == list("abcd")


def test_precision_recall_curves_are_torchmetrics_binned_curves():
    from torchmetrics.classification import MultilabelPrecisionRecallCurve

    metrics = HeadMetrics(TASKS)
    reference = MultilabelPrecisionRecallCurve(num_labels=3, thresholds=200)
    for seed in range(2):
        probs, targets, masks = random_batch(50, seed)
        metrics.update(probs, targets, masks)
        reference.update(probs["tags"][masks["tags"]], targets["tags"][masks["tags"]].long())
    curves = metrics.precision_recall_curves()
    assert set(curves) == {"tags"}  # multilabel heads only
    precision, recall, _ = reference.compute()
    torch.testing.assert_close(curves["tags"][0], precision, equal_nan=True)  # no prediction above a threshold: 0/0
    torch.testing.assert_close(curves["tags"][1], recall)
