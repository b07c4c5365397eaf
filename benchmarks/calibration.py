"""Calibration and thresholds fitted on validation, scored on test, for a trained checkpoint and a
manifest folder (``val.csv``, ``test.csv``).

Per head it fits the temperature(s) (or ``--method platt``) and, for binary and multilabel heads,
one threshold per output (``--objective``) on the validation split
(:func:`mhc.calibration.calibrate_tasks`, what ``mhc-calibrate`` runs), and prints the test
split's expected calibration error and Brier score before and after, with macro-F1 at 0.5
(uncalibrated) and at the tuned thresholds (calibrated), and the time the fitting took. With
``--repeat N`` the validation split is repeated N times first (how long a larger split takes).

    python benchmarks/calibration.py --ckpt CKPT --data FOLDER [--objective f1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import mhc
from mhc.api.calibrate import split_outputs
from mhc.calibration import calibrate_tasks, calibration_report
from mhc.data.manifest import ManifestDataset, read_manifest


def outputs(net, path: Path, batch_size: int = 512) -> tuple[dict, dict]:
    """Every sample's logits per task, and the split's collated labels."""
    dataset = ManifestDataset(read_manifest(path), list(net.tasks.values()), net.processor)
    batches = (dataset.gather(range(first, min(first + batch_size, len(dataset))))
               for first in range(0, len(dataset), batch_size))
    return split_outputs(net, batches)


def repeated(logits: dict, labels: dict, times: int) -> tuple[dict, dict]:
    return ({k: v.repeat(times, *[1] * (v.dim() - 1)) for k, v in logits.items()},
            {key: {k: v.repeat(times, *[1] * (v.dim() - 1)) for k, v in part.items()} for key, part in labels.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", type=Path, required=True, help="a folder with val.csv and test.csv")
    parser.add_argument("--objective", default="f1", help="f1, precision@P, recall@R or fixed:T")
    parser.add_argument("--method", default="temperature", help="temperature or platt")
    parser.add_argument("--repeat", type=int, default=1, help="fit on the validation split repeated this many times")
    args = parser.parse_args()

    net = mhc.load(args.ckpt)
    val_logits, val = repeated(*outputs(net, args.data / "val.csv"), args.repeat)
    test_logits, test = outputs(net, args.data / "test.csv")
    tasks = list(net.tasks.values())
    start = time.perf_counter()
    calibrated = calibrate_tasks(tasks, val_logits, val, args.method, dict.fromkeys(net.tasks, args.objective))
    seconds = time.perf_counter() - start
    samples = len(next(iter(val_logits.values())))
    report = calibration_report(tasks, calibrated, test_logits, test, curves=False)
    print(f"fitted on {samples} validation samples in {seconds:.2f} s")
    print(f"{'head':<12} {'ECE before':>10} {'after':>7} {'Brier before':>12} {'after':>7} {'F1@0.5':>7} {'F1 tuned':>8}")
    for name, entry in report.items():
        f1 = [float(np.mean(entry[when]["f1"])) if "f1" in entry[when] else float("nan") for when in ("before", "after")]
        print(f"{name:<12} {entry['before']['ece']:>10.4f} {entry['after']['ece']:>7.4f} {entry['before']['brier']:>12.4f}"
              f" {entry['after']['brier']:>7.4f} {f1[0]:>7.4f} {f1[1]:>8.4f}")
    print(json.dumps({"fit_seconds": seconds, "samples": samples, "tasks": report}, indent=2))


if __name__ == "__main__":
    main()
