"""``mhc-calibrate`` and ``mhc-train calibrate=true``: what is fitted, where it is stored, and
that every reader of the checkpoint decides with it; ``mhc-eval``'s per-class report against
scikit-learn."""

import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

import mhc
from mhc.api import calibrate, evaluate, train
from mhc.api.build import build_datamodule
from mhc.api.calibrate import split_outputs
from mhc.errors import ConfigError
from mhc.export import export_checkpoint
from mhc.io import read_checkpoint


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_writes_a_new_checkpoint_that_every_reader_decodes_with(make_cfg, trained_checkpoint, tmp_path):
    before = digest(trained_checkpoint)
    out, report = calibrate(make_cfg(f"ckpt={trained_checkpoint}", "threshold={marks: f1, outlined: recall@0.9}",
                                     "min_confidence={shape: 0.4}", config_name="calibrate"))
    assert digest(trained_checkpoint) == before  # the input is never changed
    assert out == tmp_path / "calibrated.ckpt"
    assert {"calibration.json", "reliability.png", "coverage.png"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "calibration.json").read_text()) == json.loads(json.dumps(report))

    net = mhc.load(out)
    for name, task in net.tasks.items():  # the fitted values are the checkpoint's tasks
        assert task.temperature == report["tasks"][name]["fitted"]["temperature"]
        assert task.thresholds == report["tasks"][name]["fitted"]["thresholds"]
    assert net.tasks["marks"].threshold == "f1" and net.tasks["outlined"].threshold == "recall@0.9"
    assert len(net.tasks["marks"].thresholds) == 4 and net.tasks["shape"].thresholds is None
    assert net.tasks["shape"].min_confidence == 0.4
    assert read_checkpoint(out)["mhc"]["calibration"]["split"] == "val"
    assert set(report) == {"split", "method", "tasks", "test"}  # the test split is reported beside
    for entry in report["tasks"].values():
        assert set(entry["before"]) >= {"ece", "brier"} and entry["reliability"]["after"]["count"]

    # recall@0.9 on validation: the tuned threshold reaches it on the split it was fitted on
    cfg = make_cfg(f"ckpt={out}", config_name="calibrate")
    datamodule = build_datamodule(cfg)
    datamodule.set_tasks(list(net.tasks.values()))
    logits, labels = split_outputs(net, datamodule.loader("val"))
    probs = mhc.OutputDecoder(net.tasks.values()).probabilities(logits, labels.get("allowed"))
    keep = labels["label_mask"]["outlined"].bool()
    decided = probs["outlined"][keep] >= net.tasks["outlined"].thresholds[0]
    positive = labels["targets"]["outlined"][keep].bool()
    assert (decided & positive).sum() / positive.sum() >= 0.9


def test_calibrate_options_fail_naming_the_task_or_option(make_cfg, trained_checkpoint):
    for overrides, message in [
        (["threshold={nope: f1}"], "threshold: unknown task 'nope'"),
        (["threshold={shape: f1}"], "threshold.shape: applies to binary and multilabel tasks; 'shape' is multiclass"),
        (["threshold=best"], "the threshold objective must be f1, precision@P, recall@R or fixed:T"),
        (["min_confidence={marks: 0.5}"], "min_confidence.marks: applies to multiclass and binary tasks"),
        (["min_confidence=2"], r"min_confidence.shape: expected a number in \[0, 1\], got 2"),
        (["method=isotonic"], r"method: expected one of \['temperature', 'platt'\], got 'isotonic'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            calibrate(make_cfg(f"ckpt={trained_checkpoint}", *overrides, config_name="calibrate"))


def test_train_calibrate_true_stores_the_calibration_in_the_best_checkpoint(make_cfg, tmp_path):
    result = train(make_cfg("calibrate=true", "calibration_method=platt", "tasks.marks.threshold=f1",
                            "tasks.shape.min_confidence=0.3", "trainer.max_epochs=2"))
    checkpoint = read_checkpoint(result.best_checkpoint)
    stored = checkpoint["mhc"]["calibration"]
    assert stored["method"] == "platt" and set(stored) == {"split", "method", "tasks", "test"}
    assert result.calibration == stored
    tasks = {t["name"]: t for t in checkpoint["mhc"]["net"]["tasks"]}
    assert tasks["marks"]["calibration_bias"] is not None and tasks["shape"]["calibration_bias"] is None  # Platt: 2-class
    assert tasks["shape"]["min_confidence"] == 0.3 and tasks["marks"]["thresholds"] is not None
    assert checkpoint["hyper_parameters"]["net_config"]["tasks"] == checkpoint["mhc"]["net"]["tasks"]
    assert checkpoint["mhc"]["metrics"] == result.metrics["val"]  # validated again at the tuned thresholds
    assert {"calibration.json", "reliability.png", "coverage.png"} <= {p.name for p in (tmp_path / "calibration").iterdir()}
    logged = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"calibration/val/marks/ece_before", "calibration/test/shape/brier_after"} <= set(logged)

    card = (export_checkpoint(result.best_checkpoint, tmp_path / "export") / "README.md").read_text()
    for section in ("## Calibration", "## Decision thresholds", "## Abstention", "reliability.png", "coverage.png"):
        assert section in card
    assert "| marks | dot |" in card and "| shape | 0.3 |" in card
    assert {"reliability.png", "coverage.png"} <= {p.name for p in (tmp_path / "export").iterdir()}


def test_export_of_an_uncalibrated_checkpoint_says_so_and_drops_old_figures(trained_checkpoint, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "reliability.png").write_bytes(b"stale")
    card = (export_checkpoint(trained_checkpoint, folder) / "README.md").read_text()
    assert "## Calibration\n\nUncalibrated" in card and not (folder / "reliability.png").exists()
    assert "## Abstention" not in card


def test_eval_reports_per_class_scores_and_confusion_as_scikit_learn_counts_them(make_cfg, trained_checkpoint, tmp_path):
    out, _ = calibrate(make_cfg(f"ckpt={trained_checkpoint}", "threshold=f1", output_dir=tmp_path / "cal",
                                config_name="calibrate"))
    evaluate(make_cfg(f"ckpt={out}", "split=test", config_name="eval"))
    report = json.loads((tmp_path / "metrics.json").read_text())
    net = mhc.load(out)
    datamodule = build_datamodule(make_cfg(f"ckpt={out}", config_name="eval"))
    datamodule.set_tasks(list(net.tasks.values()))
    logits, labels = split_outputs(net, datamodule.loader("test"))
    probs = mhc.OutputDecoder(net.tasks.values()).probabilities(logits, labels.get("allowed"))
    for name, task in net.tasks.items():
        keep = labels["label_mask"][name].bool()
        p, y = probs[name][keep], labels["targets"][name][keep].long().numpy()
        if task.kind == "multiclass":
            predicted, classes = p.argmax(-1).numpy(), list(range(task.num_classes))
        else:
            cut = torch.tensor(task.decision_thresholds())
            predicted = (p.reshape(len(p), -1) >= cut).long().numpy()
            classes = None
            if task.kind == "binary":
                predicted, classes = predicted[:, 0], [0, 1]
        precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=classes, zero_division=0)
        rows = report["per_class"][name]
        assert [r["class"] for r in rows] == task.classes
        np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-9, err_msg=name)
        np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-9, err_msg=name)
        np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-9, err_msg=name)
        assert [r["support"] for r in rows] == support.tolist()
        if task.kind != "multiclass":
            assert report["thresholds"][name] == pytest.approx(task.thresholds)
            assert report["metrics"][name]["f1"] == pytest.approx(float(np.mean(f1 if task.kind == "multilabel" else f1[1])))
