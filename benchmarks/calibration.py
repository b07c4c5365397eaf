"""Calibration and thresholds fitted on validation, scored on test, for a trained checkpoint and a
manifest folder (``val.csv``, ``test.csv``).

Per head it fits the temperature(s) (:func:`mhc.calibration.fit_temperature`) and then, for
binary and multilabel heads, one threshold per output (:func:`~mhc.calibration.tune_thresholds`,
``--objective``) on the validation split, and prints the test split's expected calibration error
and Brier score before and after, with macro-F1 at 0.5 (uncalibrated) and at the tuned
thresholds (calibrated).

    python benchmarks/calibration.py --ckpt CKPT --data FOLDER [--objective f1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from sklearn.metrics import f1_score

import mhc
from mhc.calibration import calibration_scores, fit_temperature, tune_thresholds
from mhc.data.labels import batch_inputs
from mhc.data.manifest import ManifestDataset, read_manifest
from mhc.predictor import OutputDecoder


@torch.no_grad()
def outputs(net, path: Path, batch_size: int = 512) -> tuple[dict, dict]:
    """Every sample's logits per task, and the split's collated labels."""
    dataset = ManifestDataset(read_manifest(path), list(net.tasks.values()), net.processor)
    labels = dataset.gather(range(len(dataset)))
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in net.tasks}
    for first in range(0, len(dataset), batch_size):
        batch = dataset.gather(range(first, min(first + batch_size, len(dataset))))
        for name, value in net(batch_inputs(batch)).items():
            logits[name].append(value.float())
    return {name: torch.cat(parts) for name, parts in logits.items()}, labels


def macro_f1(task, probs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, thresholds: list[float]) -> float:
    p, y = probs[keep], targets[keep]
    if task.kind == "multiclass":
        return float(f1_score(y.numpy(), p.argmax(-1).numpy(), average="macro", zero_division=0))
    predicted = (p.reshape(len(p), -1) >= torch.tensor(thresholds)).int().numpy()
    return float(f1_score(y.reshape(len(y), -1).int().numpy(), predicted, average="macro", zero_division=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", type=Path, required=True, help="a folder with val.csv and test.csv")
    parser.add_argument("--objective", default="f1", help="f1, precision@P, recall@R or fixed:T")
    args = parser.parse_args()

    net = mhc.load(args.ckpt)
    val_logits, val = outputs(net, args.data / "val.csv")
    test_logits, test = outputs(net, args.data / "test.csv")
    plain_decoder = OutputDecoder(net.tasks.values())
    calibrated = []
    for task in net.tasks.values():
        mask = val["label_mask"][task.name]
        temperature = fit_temperature(task, val_logits[task.name], val["targets"][task.name], mask,
                                      val.get("allowed", {}).get(task.name))
        calibrated.append(dataclasses.replace(task, temperature=temperature))
    val_probs = OutputDecoder(calibrated).probabilities(val_logits, val.get("allowed"))
    calibrated = [task if task.kind == "multiclass" else dataclasses.replace(
        task, thresholds=tune_thresholds(task, val_probs[task.name], val["targets"][task.name],
                                         val["label_mask"][task.name], args.objective)) for task in calibrated]
    before = plain_decoder.probabilities(test_logits, test.get("allowed"))
    after = OutputDecoder(calibrated).probabilities(test_logits, test.get("allowed"))
    report = {}
    print(f"{'head':<12} {'ECE before':>10} {'after':>7} {'Brier before':>12} {'after':>7} {'F1@0.5':>7} {'F1 tuned':>8}")
    for task in calibrated:
        keep, targets = test["label_mask"][task.name], test["targets"][task.name]
        old, new = calibration_scores(task, before[task.name], targets, keep), calibration_scores(task, after[task.name], targets, keep)
        half = [0.5] * task.num_outputs
        row = {"ece": [old["ece"], new["ece"]], "brier": [old["brier"], new["brier"]],
               "f1": [macro_f1(task, before[task.name], targets, keep, half),
                      macro_f1(task, after[task.name], targets, keep, task.thresholds or half)],
               "temperature": task.temperature}
        report[task.name] = row
        print(f"{task.name:<12} {row['ece'][0]:>10.4f} {row['ece'][1]:>7.4f} {row['brier'][0]:>12.4f} {row['brier'][1]:>7.4f}"
              f" {row['f1'][0]:>7.4f} {row['f1'][1]:>8.4f}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
