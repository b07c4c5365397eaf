"""``mhc-sweep``: an Optuna search over ``mhc-train`` settings (learning rate, task weights,
weighting method, any config key), each trial a full training run in its own folder.

Examples::

    mhc-sweep --trials 20                                     # mhc/conf/sweep/default.yaml on the scenes
    mhc-sweep --trials 40 --space my_space.yaml -- experiment=sequences trainer.max_epochs=8
    mhc-sweep --trials 20 --storage sqlite:///sweep.db --study scenes   # resumable, parallel workers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from mhc.api.sweep import default_space, load_space, run_sweep
from mhc.cli.common import console, print_error
from mhc.errors import MhcError


def report(study: Any, output: Path) -> None:
    from rich.table import Table

    done = [t for t in study.trials if t.value is not None]
    table = Table(title=f"{len(study.trials)} trials, best first", title_justify="left")
    for column in ("trial", "value", *study.trials[0].params):
        table.add_column(column)
    for trial in sorted(done, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE"):
        table.add_row(str(trial.number), f"{trial.value:.4f}", *[str(v) for v in trial.params.values()])
    console.print(table)
    if done:
        best = {"trial": study.best_trial.number, "value": study.best_value, "params": study.best_params}
        (output / "best.json").write_text(json.dumps(best, indent=2))
        overrides = " ".join(f"{k}={v}" for k, v in study.best_params.items())
        console.print(f"best: {study.best_value:.4f} with {overrides} (written to {output / 'best.json'})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="mhc-train overrides shared by every trial")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--space", default=None, help="search-space YAML (default: the packaged mhc/conf/sweep/default.yaml)")
    parser.add_argument("--metric", default="f1", help="per-head validation metric, averaged over heads")
    parser.add_argument("--direction", choices=["maximize", "minimize"], default="maximize")
    parser.add_argument("--output", default="outputs/sweep", help="one folder per trial, and best.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--storage", default=None, help="an Optuna storage URL (sqlite:///sweep.db) to resume or share")
    parser.add_argument("--study", default=None, help="study name in the storage")
    args = parser.parse_args(argv)
    try:
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        study = run_sweep(load_space(args.space or default_space()), args.overrides, args.trials, output, args.metric, args.direction,
                          args.seed, args.storage, args.study)
        report(study, output)
    except MhcError as err:
        print_error(err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
