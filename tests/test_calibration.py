"""Temperature scaling, thresholds per class and calibration scores, checked on outputs whose
true temperature is known and against scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score

from mhc.calibration import (
    best_threshold,
    calibrate_tasks,
    calibration_report,
    calibration_scores,
    coverage_curve,
    fit_platt,
    fit_temperature,
    probabilities,
    reliability,
    tune_thresholds,
)
from mhc.errors import ConfigError
from mhc.masks import hierarchy_matrix
from mhc.tasks import TaskSpec, threshold_objective

CLASSES = TaskSpec("c", "multiclass", list("abcde"), masked=True)
TAGS = TaskSpec("t", "multilabel", list("xyz"), masked=True)


def overconfident_multiclass(n: int, scale: float, seed: int):
    """Labels drawn from softmax(u), and the logits ``scale * u`` of a model ``scale`` times too sure."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 5, generator=generator) * 1.5
    y = torch.multinomial(u.softmax(-1), 1, generator=generator).squeeze(-1)
    return u * scale, y


def overconfident_multilabel(n: int, scales: list[float], seed: int):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(n, len(scales), generator=generator) * 1.5
    y = (torch.rand(n, len(scales), generator=generator) < u.sigmoid()).float()
    return u * torch.tensor(scales), y


def test_the_fitted_temperature_is_the_true_one():
    logits, y = overconfident_multiclass(20000, 3.0, seed=0)
    (t,) = fit_temperature(CLASSES, logits, y, torch.ones(len(y), dtype=torch.bool))
    assert t == pytest.approx(3.0, rel=0.05)
    logits, y = overconfident_multilabel(20000, [0.5, 2.0, 4.0], seed=1)
    fitted = fit_temperature(TAGS, logits, y, torch.ones(len(y), dtype=torch.bool))
    np.testing.assert_allclose(fitted, [0.5, 2.0, 4.0], rtol=0.08)


def test_unlabelled_samples_and_disallowed_classes_are_left_out():
    logits, y = overconfident_multiclass(4000, 2.0, seed=2)
    y = torch.where(y == 4, torch.zeros_like(y), y)  # class e never the answer, and never allowed
    noise = torch.randn(1000, 5) * 50
    mask = torch.cat([torch.ones(4000, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)])
    allowed = torch.ones(5000, 5, dtype=torch.bool)
    allowed[:, 4] = False
    with_masks = fit_temperature(CLASSES, torch.cat([logits, noise]), torch.cat([y, torch.randint(0, 5, (1000,))]), mask,
                                 allowed)
    four = TaskSpec("c", "multiclass", list("abcd"), masked=True)
    alone = fit_temperature(four, logits[:, :4], y, torch.ones(4000, dtype=torch.bool))
    assert with_masks == pytest.approx(alone, rel=1e-3)


def test_an_output_with_one_target_value_or_a_head_without_labels_keeps_temperature_one():
    logits = torch.randn(50, 3) * 3
    targets = torch.zeros(50, 3)
    targets[:25, 1] = 1
    fitted = fit_temperature(TAGS, logits, targets, torch.ones(50, dtype=torch.bool))
    assert fitted[0] == fitted[2] == 1.0 and fitted[1] != 1.0
    assert fit_temperature(CLASSES, torch.randn(4, 5), torch.zeros(4), torch.zeros(4, dtype=torch.bool)) == [1.0]


def test_temperature_fitted_on_validation_lowers_the_test_calibration_error():
    val_logits, val_y = overconfident_multiclass(5000, 2.5, seed=3)
    test_logits, test_y = overconfident_multiclass(5000, 2.5, seed=4)
    everyone = torch.ones(5000, dtype=torch.bool)
    (t,) = fit_temperature(CLASSES, val_logits, val_y, everyone)
    before = calibration_scores(CLASSES, test_logits.softmax(-1), test_y, everyone)
    after = calibration_scores(CLASSES, (test_logits / t).softmax(-1), test_y, everyone)
    assert after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]


def brute_force(probs: np.ndarray, y: np.ndarray, score, admissible=lambda p, y: True) -> float:
    """The best candidate threshold by ``score`` among the admissible ones, trying every one."""
    best, chosen = -np.inf, None
    for t in sorted(set(probs.tolist())):
        predicted = probs >= t
        if admissible(predicted, y):
            value = score(y, predicted)
            if value > best:
                best, chosen = value, t
    return chosen


def test_thresholds_meet_their_objective_as_brute_force_finds():
    rng = np.random.default_rng(5)
    y = (rng.random(400) < 0.3).astype(int)
    probs = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1).round(3)  # ties included
    p, t = torch.tensor(probs), torch.tensor(y)

    def f1(y, predicted):
        return f1_score(y, predicted, zero_division=0)

    assert best_threshold(p, t, "f1") == pytest.approx(brute_force(probs, y, f1))
    precise = brute_force(probs, y, lambda y, q: recall_score(y, q),
                          lambda q, y: precision_score(y, q, zero_division=0) >= 0.8)
    assert best_threshold(p, t, "precision@0.8") == pytest.approx(precise)
    highest = max(th for th in set(probs.tolist()) if recall_score(y, probs >= th) >= 0.9)  # the fewest predicted
    assert best_threshold(p, t, "recall@0.9") == pytest.approx(highest)
    assert best_threshold(p, t, "fixed:0.3") == 0.3
    assert best_threshold(p, torch.zeros(400), "f1") == 0.5  # no positive: nothing to tune


def test_thresholds_per_output_over_labelled_samples_only():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.1, 0.3, 0.7], [0.99, 0.99, 0.99]])
    targets = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    labelled = torch.tensor([True, True, True, False])  # the last row would spoil every class
    assert tune_thresholds(TAGS, probs, targets, labelled, "f1") == pytest.approx([0.8, 0.7, 0.6])
    with pytest.raises(ConfigError, match="task 'c': thresholds apply to binary and multilabel tasks"):
        tune_thresholds(CLASSES, probs, targets, labelled, "f1")


def test_scores_match_scikit_learn_and_a_direct_count():
    rng = np.random.default_rng(6)
    binary = TaskSpec("b", "binary", ["no", "yes"])
    p = rng.random(300)
    y = (rng.random(300) < p ** 2).astype(int)
    scores = calibration_scores(binary, torch.tensor(p), torch.tensor(y), torch.ones(300, dtype=torch.bool))
    assert scores["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-5)
    bins = np.minimum((p * 15).astype(int), 14)  # 15 equal bins of P(positive)
    ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean() for b in range(15) if (bins == b).any())
    assert scores["ece"] == pytest.approx(ece, rel=1e-4)


@pytest.mark.parametrize("objective", ["f2", "precision@", "precision@1.5", "recall:0.9", "fixed@0.5"])
def test_bad_objectives_fail_naming_the_forms(objective):
    with pytest.raises(ConfigError, match="task 'x': the threshold objective must be f1, precision@P, recall@R or fixed:T"):
        TaskSpec("x", "binary", ["no", "yes"], threshold=objective)
    with pytest.raises(ConfigError, match="the threshold objective must be"):
        threshold_objective(objective)


def test_every_runtime_decoder_applies_the_temperatures_and_thresholds():
    from mhc.predictor import OutputDecoder

    tasks = [TaskSpec("c", "multiclass", list("abc"), temperature=[2.0]),
             TaskSpec("b", "binary", ["no", "yes"], temperature=[0.5], thresholds=[0.8]),
             TaskSpec("t", "multilabel", list("xyz"), temperature=[1.0, 2.0, 4.0], thresholds=[0.9, 0.1, 0.5])]
    logits = {"c": torch.tensor([[2.0, 0.0, -2.0]]), "b": torch.tensor([[0.5]]), "t": torch.tensor([[2.0, -1.0, 1.0]])}
    decoder = OutputDecoder(tasks)
    probs = decoder.probabilities(logits)
    torch.testing.assert_close(probs["c"], (logits["c"] / 2).softmax(-1))
    torch.testing.assert_close(probs["b"], torch.sigmoid(torch.tensor([1.0])))
    torch.testing.assert_close(probs["t"], torch.sigmoid(torch.tensor([[2.0, -0.5, 0.25]])))
    decided = decoder.decode(probs)  # P(yes) 0.73 < 0.8; x 0.88 < 0.9, y 0.38 >= 0.1, z 0.56 >= 0.5
    assert decided["b"].labels == ["no"] and decided["t"].labels == [["y", "z"]] and decided["c"].labels == ["a"]
    overridden = decoder.decode(probs, threshold=0.5)  # a call's threshold wins for every output
    assert overridden["b"].labels == ["yes"] and overridden["t"].labels == [["x", "z"]]
    fixed = OutputDecoder([TaskSpec("b", "binary", ["no", "yes"], threshold="fixed:0.2")])
    assert fixed.decode({"b": torch.tensor([0.3, 0.1])})["b"].labels == ["yes", "no"]


@pytest.mark.parametrize("options, problem", [
    ({"kind": "multilabel", "classes": list("xyz"), "temperature": [1.0, 2.0]}, "temperature must be 3 positive number"),
    ({"kind": "binary", "classes": ["no", "yes"], "temperature": [0.0]}, "temperature must be 1 positive number"),
    ({"kind": "multiclass", "classes": list("ab"), "thresholds": [0.5, 0.5]}, "thresholds apply to binary and multilabel"),
    ({"kind": "multilabel", "classes": list("xy"), "thresholds": [0.5, 1.5]}, r"thresholds must be 2 number\(s\) in \[0, 1\]"),
])
def test_bad_calibration_options_fail_naming_the_task(options, problem):
    with pytest.raises(ConfigError, match=f"task 'x': {problem}"):
        TaskSpec("x", **options)


def test_platt_scaling_finds_the_true_scale_and_intercept():
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(30000, 2, generator=generator) * 1.5
    y = (torch.rand(30000, 2, generator=generator) < u.sigmoid()).float()
    scale, shift = torch.tensor([0.5, 3.0]), torch.tensor([1.0, -0.7])
    logits = (u - shift) * scale  # sigmoid(logits / scale + shift) is the true probability
    temperature, bias = fit_platt(TAGS2, logits, y, torch.ones(30000, dtype=torch.bool))
    np.testing.assert_allclose(temperature, [0.5, 3.0], rtol=0.06)
    np.testing.assert_allclose(bias, [1.0, -0.7], atol=0.06)
    with pytest.raises(ConfigError, match="task 'c': Platt scaling applies to binary and multilabel heads"):
        fit_platt(CLASSES, torch.randn(4, 5), torch.zeros(4), torch.ones(4, dtype=torch.bool))


TAGS2 = TaskSpec("t2", "multilabel", ["x", "y"], masked=True)


def test_a_child_head_is_calibrated_under_its_parents_predicted_class_as_the_decoder_decodes():
    parent = TaskSpec("p", "multiclass", ["left", "right"])
    child = TaskSpec("c", "multiclass", list("abcd"), parent="p", allowed_by_parent={"left": ["a", "b"], "right": ["c", "d"]})
    generator = torch.Generator().manual_seed(4)
    logits = {"p": torch.randn(3000, 2, generator=generator) * 3, "c": torch.randn(3000, 4, generator=generator) * 4}
    labels = {"targets": {"p": torch.randint(0, 2, (3000,), generator=generator),
                          "c": torch.randint(0, 4, (3000,), generator=generator)},
              "label_mask": {"p": torch.ones(3000, dtype=torch.bool), "c": torch.ones(3000, dtype=torch.bool)}}
    allowed = hierarchy_matrix(child, parent)[logits["p"].argmax(-1)]
    # the child's labels, as a trained child predicts them: within what the predicted parent allows
    labels["targets"]["c"] = torch.where(allowed[torch.arange(3000), labels["targets"]["c"]], labels["targets"]["c"],
                                         allowed.float().argmax(-1))
    logits["c"] += 3 * torch.nn.functional.one_hot(labels["targets"]["c"], 4)  # informative, and overconfident
    calibrated = {t.name: t for t in calibrate_tasks([parent, child], logits, labels)}
    expected = fit_temperature(child, logits["c"], labels["targets"]["c"], labels["label_mask"]["c"], allowed)
    assert calibrated["c"].temperature == pytest.approx(expected)
    assert calibrated["c"].temperature != pytest.approx(fit_temperature(child, logits["c"], labels["targets"]["c"],
                                                                        labels["label_mask"]["c"]))
    from mhc.predictor import OutputDecoder

    decoded = OutputDecoder(calibrated.values()).probabilities(logits)["c"]
    torch.testing.assert_close(decoded, probabilities(calibrated["c"], logits["c"], allowed))


def test_reliability_points_and_the_coverage_curve_by_hand():
    task = TaskSpec("c", "multiclass", list("abc"))
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    targets = torch.tensor([0, 1, 1, 0, 0])
    mask = torch.tensor([True, True, True, True, False])
    points = reliability(task, probs, targets, mask, bins=5)  # confidences 0.9, 0.6, 0.7, 0.4 (the last unlabelled)
    assert points["count"] == [1, 2, 1]  # bins [0.4, 0.6), [0.6, 0.8), [0.8, 1]
    np.testing.assert_allclose(points["confidence"], [0.4, 0.65, 0.9])
    np.testing.assert_allclose(points["accuracy"], [1.0, 0.5, 1.0])  # 0.6 wrong, 0.7 right
    curve = coverage_curve(task, probs, targets, mask, coverages=[1.0, 0.5, 0.25])
    assert curve["coverage"] == [1.0, 0.5, 0.25]
    np.testing.assert_allclose(curve["accuracy"], [0.75, 1.0, 1.0])  # by confidence: 0.9 ok, 0.7 ok, 0.6 no, 0.4 ok
    np.testing.assert_allclose(curve["confidence"], [0.4, 0.7, 0.9])
    binary = TaskSpec("b", "binary", ["no", "yes"], thresholds=[0.3])
    p, y = torch.tensor([0.2, 0.35, 0.9, 0.05]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    curve = coverage_curve(binary, p, y, torch.ones(4, dtype=torch.bool), coverages=[1.0, 0.5])
    np.testing.assert_allclose(curve["accuracy"], [0.75, 1.0])  # decided at 0.3; confidence max(p, 1 - p)
    np.testing.assert_allclose(curve["confidence"], [0.65, 0.9])


def test_report_scores_and_f1_at_the_thresholds_match_scikit_learn():
    logits, y = overconfident_multilabel(3000, [3.0, 0.5, 1.0], seed=5)
    mask = torch.rand(3000, generator=torch.Generator().manual_seed(6)) < 0.8
    labels = {"targets": {"t": y}, "label_mask": {"t": mask}}
    (calibrated,) = calibrate_tasks([TAGS], {"t": logits}, labels, objectives={"t": "f1"})
    report = calibration_report([TAGS], [calibrated], {"t": logits}, labels)["t"]
    after = probabilities(calibrated, logits)
    assert report["after"]["ece"] == pytest.approx(calibration_scores(calibrated, after, y, mask)["ece"])
    assert report["after"]["ece"] < report["before"]["ece"] and report["labelled"] == int(mask.sum())
    predicted = (after[mask] >= torch.tensor(calibrated.thresholds)).int().numpy()
    np.testing.assert_allclose(report["after"]["f1"], f1_score(y[mask].numpy(), predicted, average=None), atol=1e-9)
    plain = (logits[mask].sigmoid() >= 0.5).int().numpy()
    np.testing.assert_allclose(report["before"]["f1"], f1_score(y[mask].numpy(), plain, average=None), atol=1e-9)
    assert np.mean(report["after"]["f1"]) >= np.mean(report["before"]["f1"])  # tuned on this very split


def test_decoders_abstain_under_the_confidence_and_take_a_calls_override():
    from mhc.predictor import OutputDecoder

    tasks = [TaskSpec("c", "multiclass", list("abc"), min_confidence=0.6),
             TaskSpec("b", "binary", ["no", "yes"], calibration_bias=[1.0], min_confidence=0.7)]
    logits = {"c": torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0]]), "b": torch.tensor([[0.0], [-3.0]])}
    decoder = OutputDecoder(tasks)
    probs = decoder.probabilities(logits)
    torch.testing.assert_close(probs["b"], torch.sigmoid(torch.tensor([1.0, -2.0])))  # Platt's intercept added
    decided = decoder.decode(probs)  # c: 0.79 / 0.45; b: P(yes) 0.73 / 0.12
    assert decided["c"].labels == ["a", None] and decided["b"].labels == ["yes", "no"]
    assert decoder.decode(probs, min_confidence=0.8)["b"].labels == [None, "no"]
    assert decoder.decode(probs, min_confidence=0.0)["c"].labels == ["a", "a"]


@pytest.mark.parametrize("options, problem", [
    ({"kind": "multiclass", "classes": list("ab"), "calibration_bias": [0.0]}, "calibration_bias \\(Platt scaling\\) applies"),
    ({"kind": "multilabel", "classes": list("xy"), "calibration_bias": [0.0]}, r"calibration_bias must be 2 number\(s\)"),
    ({"kind": "multilabel", "classes": list("xy"), "min_confidence": 0.5}, "min_confidence applies to multiclass and binary"),
    ({"kind": "binary", "classes": ["n", "y"], "min_confidence": 1.5}, r"min_confidence must be in \[0, 1\]"),
])
def test_bad_decision_options_fail_naming_the_task(options, problem):
    with pytest.raises(ConfigError, match=f"task 'x': {problem}"):
        TaskSpec("x", **options)
