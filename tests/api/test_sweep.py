"""mhc-sweep: Optuna trials are real training runs over the search space; a multirun works too."""

import json
import subprocess
import sys

import pytest

from mhc.api.sweep import default_space, load_space, objective_value
from mhc.cli.sweep import main
from mhc.errors import ConfigError
from tests.api.conftest import TINY, TINY_SCENES


def test_sweep_runs_trials_over_the_space_and_writes_the_best(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  optimizer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "  tasks.shape.weight: {type: float, low: 0.5, high: 2.0}\n"
                     "  weighting: {type: categorical, choices: [equal, pcgrad]}\n")
    main(["--trials", "2", "--space", str(space), "--output", str(tmp_path / "sweep"), *TINY_SCENES, *TINY])
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert set(best["params"]) == {"optimizer.lr", "tasks.shape.weight", "weighting"}
    assert 1e-3 <= best["params"]["optimizer.lr"] <= 1e-2 and best["params"]["weighting"] in ("equal", "pcgrad")
    assert 0.0 <= best["value"] <= 1.0
    assert (tmp_path / "sweep" / "trial_000" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "sweep" / "trial_001" / "checkpoints" / "last.ckpt").is_file()
    assert "best: " in capsys.readouterr().err


def test_bad_search_space_is_a_clear_error(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  optimizer.lr: {type: uniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match=r"params.optimizer.lr.type must be float, int or categorical, got 'uniform'"):
        load_space(space)
    space.write_text("params:\n  weighting: {type: categorical}\n")
    with pytest.raises(ConfigError, match=r"params.weighting \(categorical\) needs \['choices'\]"):
        load_space(space)


def test_default_space_is_valid():
    assert {"optimizer.lr", "weighting"} <= set(load_space(default_space()))


def test_objective_is_the_mean_over_heads_of_the_metric():
    metrics = {"shape": {"acc": 0.5, "loss": 1.0}, "size": {"acc": 1.0}, "marks": {"f1": 0.3}}
    assert objective_value(metrics, "acc") == 0.75
    with pytest.raises(ConfigError, match="--metric auroc: the runs report no such per-head metric"):
        objective_value(metrics, "auroc")


def test_hydra_multirun_over_weighting_methods(tmp_path):
    overrides = [o for o in [*TINY_SCENES, *TINY] if not o.startswith("~")]
    proc = subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", "-m", "weighting=equal,pcgrad", *overrides, "callbacks.progress_bar=null",
         "test=false", f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "0" / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "1" / "checkpoints" / "last.ckpt").is_file()
