"""Loader workers in a real training run: ``mhc-train`` (the default config: compact CNN,
generated scenes, batch 128) on 2,000 training and 500 validation images for 3 epochs, with
``data.num_workers=0`` (the default; loading in the training process) against 2 workers kept
between epochs (``data.persistent_workers=true``) and 2 workers started again for every epoch
and every validation. Runs alternate between the settings in one process; the table reports the
median wall time of ``train`` (fit and the best checkpoint's validation) over repeats.

    python benchmarks/data_workers.py [--repeats 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import warnings

import torch
from timing import timed

from mhc.api import compose_config, train


def quiet_train(cfg) -> None:
    """``train`` without Lightning's messages and progress output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train(cfg)


SETTINGS = {
    "0 workers": ["data.num_workers=0"],
    "2 workers, persistent": ["data.num_workers=2", "data.persistent_workers=true"],
    "2 workers, restarted": ["data.num_workers=2", "data.persistent_workers=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as out:
        common = ["data.num_train=2000", "data.num_val=500", "data.num_test=100", f"trainer.max_epochs={args.epochs}",
                  "test=false", "logger=none", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", f"paths.cache_dir={out}/cache"]
        quiet_train(compose_config("train", [*common, "trainer.max_epochs=1"], output_dir=f"{out}/warmup"))
        for repeat in range(args.repeats):
            for index, (name, overrides) in enumerate(SETTINGS.items()):
                cfg = compose_config("train", [*common, *overrides], output_dir=f"{out}/run{repeat}-{index}")
                seconds[name].append(timed(lambda: quiet_train(cfg)))  # noqa: B023 (called at once)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; mhc-train defaults, 2,000 + 500 images, "
          f"{args.epochs} epochs, median of {args.repeats}")
    print("| loader | wall (s) | ratio to 0 workers |")
    print("|---|---:|---:|")
    base = statistics.median(seconds["0 workers"])
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
