import subprocess
import sys

import pytest
import torch

import mhc
from mhc.api import compose_config, train
from mhc.data.generated import scene_tasks
from mhc.errors import ConfigError
from tests.api.conftest import TINY_SCENES


def test_short_run_writes_checkpoints_and_metrics(make_cfg, tmp_path):
    result = train(make_cfg(figures=True))
    metrics = result.metrics["val"]  # {task: {metric: value}} of the best checkpoint
    assert all("acc" in metrics.get(t.name, {}) for t in scene_tasks())
    assert all(0.0 <= v <= 1.0 for values in metrics.values() for m, v in values.items() if m != "loss")
    assert all(0.0 <= values["loss"] < float("inf") for values in metrics.values() if "loss" in values)
    assert set(result.metrics["test"]) == set(metrics)  # test=true: the best checkpoint tested too
    assert result.mean("acc") == sum(v["acc"] for v in metrics.values()) / len(metrics)
    assert result.monitor == "val/mean/f1" and result.score == pytest.approx(result.mean("f1"), abs=1e-6)  # chosen on F1
    assert result.output_dir == tmp_path and result.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert result.best_checkpoint.parent == tmp_path / "checkpoints" and result.best_checkpoint.name.startswith("best-epoch")
    assert result.log_dirs == {"CSVLogger": str(tmp_path / "csv" / "version_0")}
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for name in ("val/shape/acc", "val/marks/f1", "val/outlined/auroc", "val/mean/acc", "train/color/loss"):
        assert name in header
    assert (tmp_path / "csv" / "version_0" / "confusion" / "color.png").is_file()
    hparams = (tmp_path / "csv" / "version_0" / "hparams.yaml").read_text()  # the resolved config, for dashboards
    assert "config:" in hparams and "optimizer:" in hparams and "weighting:" in hparams


def test_load_predict_round_trip(make_cfg, tmp_path):
    train(make_cfg("test=false"))
    model = mhc.load(tmp_path / "checkpoints" / "last.ckpt")
    assert not model.training
    assert set(model.tasks) == {t.name for t in scene_tasks()}
    images = torch.rand(4, 3, 64, 64)
    out = model.predict(images)
    assert set(out["shape"].labels) <= set(model.tasks["shape"].classes)
    for tone, color in zip(out["tone"].labels, out["color"].labels):
        assert color in model.tasks["color"].allowed_by_parent[tone]
    # Same weights as the Lightning checkpoint, without a Trainer.
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.heads["shape"].layers[-1].weight, state["net.heads.shape.layers.1.weight"])


def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path):
    first_run = tmp_path / "first"
    train(make_cfg("test=false", output_dir=first_run))
    last = first_run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)["global_step"]
    assert first > 0
    train(make_cfg("test=false", "trainer.max_epochs=2", f"resume={first_run}", output_dir=tmp_path / "second"))
    assert torch.load(last, weights_only=True)["global_step"] == 2 * first  # continued in the first run's folder
    assert not (tmp_path / "second" / "checkpoints").exists()


@pytest.mark.parametrize(("overrides", "monitor"), [
    ([], "val/mean/f1"),
    (["+delta_m.baseline={shape: 0.5, size: 0.5}"], "val/delta_m"),
    (["callbacks.model_checkpoint.monitor=val/mean/acc"], "val/mean/acc"),
    (["callbacks=early_stop"], "val/mean/f1"),
])
def test_monitor_auto_is_f1_or_delta_m_with_a_baseline(make_cfg, overrides, monitor):
    from mhc.api.build import build_callbacks

    callbacks = build_callbacks(make_cfg(*overrides), has_logger=False)
    monitored = [c.monitor for c in callbacks if getattr(c, "monitor", None)]
    assert monitored and set(monitored) == {monitor}


def test_task_override_reaches_the_model(make_cfg, tmp_path):
    train(make_cfg("test=false", "tasks.shape.loss=focal", "tasks.color.hidden=[16]", "head.dropout=0.1",
                   "loss=smoothed"))
    model = mhc.load(tmp_path / "checkpoints" / "last.ckpt")
    assert model.tasks["shape"].loss == "focal" and model.tasks["shape"].dropout == 0.1
    assert model.tasks["color"].hidden == [16] and model.tasks["size"].hidden == []
    assert model.tasks["size"].label_smoothing == 0.1 and model.tasks["marks"].loss == "bce"


def test_unknown_task_option_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match=r"tasks.shape: unknown option\(s\) \['foo'\]"):
        train(make_cfg("+tasks.shape.foo=1"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("+tasks.colour.loss=focal", "error: tasks.colour: unknown task; the data provides ['color', 'marks', "),
        ("+foo=1", "unknown config key(s) ['foo']"),
        ("+trainer.max_epoch=3", "error: trainer: unknown option(s) ['max_epoch'] for pytorch_lightning.Trainer; its options are"),
        ("+backbone.widthz=3", "got an unexpected keyword argument 'widthz'"),
        ("tasks.shape.loss=bce", "loss 'bce' does not fit a multiclass task"),
        ("backbone.name=resnet19", "unknown backbone 'resnet19'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code(override, message, tmp_path, capsys, monkeypatch):
    stderr = failed_train(override, tmp_path, capsys, monkeypatch)
    assert message in stderr
    assert "Traceback" not in stderr


def test_a_failed_run_leaves_no_folder_but_keeps_one_that_holds_other_files(tmp_path, capsys, monkeypatch):
    failed_train("tasks.shape.loss=bce", tmp_path / "new", capsys, monkeypatch)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept" / "checkpoints").mkdir(parents=True)
    (tmp_path / "kept" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    failed_train("tasks.shape.loss=bce", tmp_path / "kept", capsys, monkeypatch)
    assert (tmp_path / "kept" / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's"
    assert "error: " in (tmp_path / "kept" / "train.log").read_text()


def failed_train(override: str, tmp_path, capsys, monkeypatch) -> str:
    """The stderr of ``mhc-train <override>``, which must exit with code 1."""
    from mhc.cli import train as command  # in this process: the same entry point as mhc-train, without a start-up each

    monkeypatch.setattr(sys, "argv", ["mhc-train", override, f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exited:
        command.main()
    assert exited.value.code == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=abc", "error: seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        ("tasks.shape.weight=abc", "error: tasks.shape.weight=abc: Value 'abc' of type 'str' could not be converted to Float"),
        ("trainer.max_epoch=3", "error: trainer.max_epoch: no such option; did you mean trainer.max_epochs?"),
        ("tasks.shape.lossx=focal", "error: tasks.shape.lossx: no such option; did you mean tasks.shape.loss?"),
        ("trainer.zzz=3", "error: trainer.zzz: no such option; +trainer.zzz=... adds a new key"),
        ("~trainer.max_epoch", "error: ~trainer.max_epoch: no such option to remove; did you mean trainer.max_epochs?"),
        ("data=manifests", "error: data=manifests: data has no option 'manifests'; did you mean manifest? (its options: "),
        ("trainer.max_epochs=[1", "error: trainer.max_epochs=[1: not an override Hydra can read (no viable alternative"),
    ],
)
def test_hydra_composition_errors_are_one_line_with_the_nearest_option(override, message, tmp_path, capsys, monkeypatch):
    lines = [line for line in failed_train(override, tmp_path, capsys, monkeypatch).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_a_cli_error_exits_the_process_with_code_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mhc.cli.train", "seed=abc", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: seed=abc: Value 'abc' of type 'str' could not be converted to Integer"


def test_vit_backbone_trains_and_reloads(tmp_path):
    cfg = compose_config("train", [
        *TINY_SCENES, "trainer.max_epochs=1", "~callbacks.progress_bar", "test=false",
        "backbone=vit_tiny", "backbone.dim=48", "backbone.depth=2", "backbone.patch_size=16",
    ], output_dir=tmp_path)
    train(cfg)
    model = mhc.load(tmp_path / "checkpoints" / "last.ckpt")
    assert model.backbone_config["name"] == "vit_tiny"
    assert model.predict(torch.rand(2, 3, 64, 64))["shape"].probs.shape == (2, 4)


def test_sequence_experiment_trains_on_token_batches(tmp_path):
    cfg = compose_config("train", [
        "experiment=sequences", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32",
        "backbone.dim=32", "backbone.depth=1", "trainer.max_epochs=1", "~callbacks.progress_bar",
    ], output_dir=tmp_path)
    metrics = train(cfg).metrics["val"]
    assert "acc" in metrics["first"] and "acc" in metrics["before"] and "acc" in metrics["majority"]
    assert "auroc" in metrics["ordered"]
    model = mhc.load(tmp_path / "checkpoints" / "last.ckpt")
    assert model(torch.tensor([[2, 3, 1, 18, 19, 0, 0]]))["before"].shape == (1, 4)
    assert model.backbone_config["vocab_size"] == len(model.tokenizer) == 21  # 20 tokens and <mask>
    from_text = model.predict("a0 b1 | X c2 Y")["first"].probs  # the saved word vocabulary
    assert torch.allclose(from_text, model.predict(torch.tensor([2, 7, 1, 18, 12, 19]))["first"].probs, atol=1e-5)
