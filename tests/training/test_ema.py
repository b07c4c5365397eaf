"""Weight averaging (``callbacks=ema``, ``callbacks=swa``): the average is recomputed here from the
weights recorded after every optimizer step, and ``keep=better`` is checked to report and save
whichever weights score better."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mhc.api import compose_config, train
from mhc.errors import ConfigError
from mhc.training.averaging import WeightAverage

TINY = ["data.num_train=96", "data.num_val=32", "data.num_test=32", "data.batch_size=32", "backbone.widths=[8,16]",
        "~callbacks.progress_bar", "test=false"]


class StepRecorder:
    """A callback saving the network's parameters after every training batch (via +callbacks)."""

    def __new__(cls, folder: str):
        import pytorch_lightning as pl

        class _Recorder(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                state = {k: v.detach().clone() for k, v in module.net.named_parameters()}
                torch.save(state, Path(folder) / f"step{trainer.global_step:03d}.pt")

        return _Recorder()


def run(tmp_path: Path, name: str, *overrides: str):
    folder = tmp_path / f"{name}-steps"
    folder.mkdir()
    cfg = compose_config("train", [*TINY, *overrides, "+callbacks.recorder._target_=tests.training.test_ema.StepRecorder",
                                   f"+callbacks.recorder.folder={folder}"], output_dir=tmp_path / name)
    result = train(cfg)
    steps = [torch.load(p) for p in sorted(folder.glob("step*.pt"))]
    rows = list(csv.DictReader((tmp_path / name / "csv" / "version_0" / "metrics.csv").open()))
    return result, steps, [row for row in rows if row.get("val_average/mean/acc")]


def ema(steps: list[dict[str, torch.Tensor]], decay: float, warmup: bool) -> dict[str, torch.Tensor]:
    average = steps[0]  # the first update copies the weights, then each moves (1 - d) towards them
    for n, weights in enumerate(steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}
    return average


def assert_net_state(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, value in expected.items():
        torch.testing.assert_close(saved[f"net.{name}"], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("warmup", [False, True])
def test_keep_average_saves_the_moving_average_of_the_weights(tmp_path, warmup):
    decay = 0.6
    result, steps, _ = run(tmp_path, "ema", "trainer.max_epochs=1", "callbacks=ema", f"callbacks.ema.decay={decay}",
                           "callbacks.ema.keep=average", f"callbacks.ema.warmup={warmup}")
    assert len(steps) == 3
    saved = torch.load(result.last_checkpoint, weights_only=True)
    assert_net_state(saved["state_dict"], ema(steps, decay, warmup))
    assert_net_state(saved["current_model_state"], steps[-1])  # the raw weights travel beside, for resume=
    head = next(k for k in steps[-1] if k.startswith("heads."))
    assert not torch.allclose(saved["state_dict"][f"net.{head}"], steps[-1][head])


def test_keep_better_reports_and_saves_the_better_weights(tmp_path):
    """The same training twice, deciding on validation loss once as it should (min) and once
    backwards (max): each validation, the two runs keep opposite weights, and each run's
    ``val/*`` and checkpoint follow its choice."""
    kept = {}
    for mode in ("min", "max"):
        result, steps, rows = run(tmp_path, mode, "trainer.max_epochs=2", "callbacks=ema", "callbacks.ema.decay=0.9",
                                  "callbacks.ema.monitor=val/mean/loss", f"callbacks.ema.mode={mode}")
        assert len(rows) == 2 and len(steps) == 6
        choices = []
        for row in rows:
            current, average = float(row["val_current/mean/loss"]), float(row["val_average/mean/loss"])
            assert current != average
            choose = min if mode == "min" else max
            assert float(row["val/mean/loss"]) == pytest.approx(choose(current, average))
            assert float(row["val/mean/acc"]) == pytest.approx(
                float(row["val_average/mean/acc" if choose(current, average) == average else "val_current/mean/acc"]))
            choices.append(choose(current, average) == average)
        kept[mode] = choices
        saved = torch.load(result.last_checkpoint, weights_only=True)
        average, raw = ema(steps, 0.9, warmup=True), steps[-1]
        assert_net_state(saved["state_dict"], average if choices[-1] else raw)
        assert_net_state(saved["current_model_state" if choices[-1] else "average_model_state"], raw if choices[-1] else average)
        described = saved["mhc"]["metrics"]  # what mhc.load's model card shows: the kept weights' metrics
        assert sum(v["loss"] for v in described.values()) / len(described) == pytest.approx(float(rows[-1]["val/mean/loss"]))
        best = torch.load(result.best_checkpoint, weights_only=True)["mhc"]["metrics"]
        for task, values in result.metrics["val"].items():  # validated again after fitting: the kept weights
            assert values == pytest.approx(best[task], abs=1e-6), task
    assert kept["min"] == [not c for c in kept["max"]]


def test_swa_averages_the_weights_of_the_last_steps_equally(tmp_path):
    result, steps, _ = run(tmp_path, "swa", "trainer.max_epochs=2", "callbacks=swa", "callbacks.swa.start=0.5",
                           "callbacks.swa.keep=average")
    assert len(steps) == 6
    tail = steps[3:]  # optimizer steps 3, 4, 5 of 6 (zero-based)
    mean = {k: sum(s[k] for s in tail) / len(tail) for k in tail[0]}
    assert_net_state(torch.load(result.last_checkpoint, weights_only=True)["state_dict"], mean)


def test_resume_continues_both_weights_exactly(tmp_path):
    options = ["callbacks=ema", "callbacks.ema.decay=0.9", "scheduler=none", "trainer.deterministic=true"]
    whole, _, _ = run(tmp_path, "whole", "trainer.max_epochs=2", *options)
    run(tmp_path, "first", "trainer.max_epochs=1", *options)
    run(tmp_path, "second", "trainer.max_epochs=2", f"resume={tmp_path / 'first'}", *options)
    expected = torch.load(whole.last_checkpoint, weights_only=True)
    resumed = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state", "average_model_state"):
        if key in expected:
            assert key in resumed
            for name, value in expected[key].items():
                assert torch.equal(resumed[key][name], value), f"{key}: {name}"


@pytest.mark.parametrize("options, problem", [
    ({"decay": 1.0}, "decay must be in [0, 1)"),
    ({"start": 1.0}, "start must be a fraction"),
    ({"every_n_steps": 0}, "every_n_steps must be a positive integer"),
    ({"keep": "best"}, "keep must be one of better, average"),
    ({"mode": "up"}, "mode must be 'max' or 'min'"),
])
def test_bad_options_fail_naming_them(options, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        WeightAverage(**options)


def test_an_unknown_monitor_fails_naming_the_metrics(tmp_path):
    with pytest.raises(ConfigError, match=r"WeightAverage monitors 'val/mean/accuracy', which validation does not log; similar: \[.*'val/mean/acc'"):
        run(tmp_path, "bad", "trainer.max_epochs=1", "callbacks=ema", "callbacks.ema.monitor=val/mean/accuracy")
