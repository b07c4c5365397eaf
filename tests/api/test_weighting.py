"""Weighting methods, learning-rate groups and backbone freezing, through mhc-train."""

import pytest
import torch

from mhc.api import train
from mhc.errors import ConfigError


def state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("overrides", [
    ["weighting=pcgrad"],
    ["weighting=mgda", "weighting.grads=parameters", "trainer.accumulate_grad_batches=2"],
    ["weighting=uncertainty"],
    ["weighting=cagrad", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0"],
])
def test_weighting_methods_train_and_checkpoint(make_cfg, tmp_path, overrides):
    result = train(make_cfg("test=false", "trainer.log_every_n_steps=1", *overrides))
    assert 0.0 <= result.metrics["val"]["shape"]["acc"] <= 1.0
    checkpoint = state(tmp_path / "checkpoints" / "last.ckpt")
    # 96 samples, batch 32: 3 batches; accumulating 2 gives 2 optimizer steps (the last one partial)
    assert checkpoint["global_step"] == (2 if "trainer.accumulate_grad_batches=2" in overrides else 3)
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/weight/shape" in header and "train/conflict/mean_cosine" in header


@pytest.mark.parametrize("method", ["gradnorm", "dwa"])
def test_stateful_method_resumes_exactly(make_cfg, tmp_path, method):
    """Three epochs in one go, and two epochs then a resumed third, end with the same weights
    (DWA's weights first move in the third epoch)."""
    common = ["test=false", f"weighting={method}", "trainer.deterministic=true", "scheduler=none"]
    train(make_cfg(*common, "trainer.max_epochs=3", output_dir=tmp_path / "whole"))
    train(make_cfg(*common, "trainer.max_epochs=2", output_dir=tmp_path / "split"))
    train(make_cfg(*common, "trainer.max_epochs=3", f"resume={tmp_path / 'split'}", output_dir=tmp_path / "x"))
    whole = state(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    split = state(tmp_path / "split" / "checkpoints" / "last.ckpt")
    assert whole["global_step"] == split["global_step"] == 9
    for key, value in whole["state_dict"].items():
        assert torch.equal(split["state_dict"][key], value), key
    assert any(k.startswith("weighting.") for k in whole["state_dict"])  # the method's state travels with it


def test_learning_rate_scales_reach_the_optimizer(make_cfg):
    from mhc.api.build import build_datamodule, build_module

    cfg = make_cfg("scheduler=none", "optimizer.lr=0.01", "backbone_lr_scale=0.1", "tasks.shape.lr_scale=0")
    module = build_module(cfg, build_datamodule(cfg))
    lrs = {g["name"]: g["lr"] for g in module.configure_optimizers().param_groups}
    assert lrs["backbone"] == pytest.approx(0.001) and lrs["head/shape"] == 0 and lrs["head/size"] == 0.01


def test_backbone_finetuning_callback_freezes_the_backbone(make_cfg, tmp_path):
    def backbone_after(name, *overrides):
        train(make_cfg("test=false", "optimizer.weight_decay=0", *overrides, output_dir=tmp_path / name))
        saved = state(tmp_path / name / "checkpoints" / "last.ckpt")["state_dict"]
        # Convolution kernels (Lightning's BackboneFinetuning keeps batch norms training while frozen).
        return {k: v for k, v in saved.items() if k.startswith("net.backbone.") and v.ndim == 4}

    frozen = backbone_after("frozen", "callbacks=finetune")  # thawed at epoch 5, after this 1-epoch run
    still = backbone_after("still", "backbone_lr_scale=0")
    trained = backbone_after("trained")
    assert all(torch.equal(frozen[k], still[k]) for k in frozen)
    assert not all(torch.equal(frozen[k], trained[k]) for k in frozen)


def test_parameter_only_method_on_representation_is_an_error(make_cfg):
    from mhc.weighting import available, create

    only_parameters = [m for m in available() if create(m, 2).needs_grads and not create(m, 2).representation_ok]
    if not only_parameters:
        pytest.skip("every gradient method runs on the representation")
    with pytest.raises(ConfigError, match="parameter gradients only"):
        train(make_cfg(f"weighting={only_parameters[0]}", "weighting.grads=representation"))


def test_delta_m_over_a_baseline_run_selects_the_checkpoint(make_cfg, tmp_path):
    import csv

    from mhc.data.generated import scene_tasks

    base = tmp_path / "base"
    train(make_cfg("test=false", output_dir=base))
    baseline_ckpt = next((base / "checkpoints").glob("best-*.ckpt"))
    baseline = state(baseline_ckpt)["mhc"]["metrics"]
    run = tmp_path / "run"
    train(make_cfg("test=false", "trainer.max_epochs=2", "weighting=dwa",
                   f"delta_m.baseline={baseline_ckpt}", "callbacks=early_stop", "callbacks.early_stopping.monitor=val/delta_m",
                   "callbacks.model_checkpoint.monitor=val/delta_m", output_dir=run))
    rows = [r for r in csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()) if r.get("val/delta_m")]
    assert len(rows) == 3  # two epochs, then the best checkpoint validated again
    for row in rows:
        gains = [(float(row[f"val/{t.name}/acc"]) - baseline[t.name]["acc"]) / baseline[t.name]["acc"] for t in scene_tasks()]
        assert float(row["val/delta_m"]) == pytest.approx(100 * sum(gains) / len(gains), abs=1e-3)
    callback_state = next(v for k, v in state(run / "checkpoints" / "last.ckpt")["callbacks"].items() if "ModelCheckpoint" in k)
    best = max(float(r["val/delta_m"]) for r in rows[:2])
    assert float(callback_state["best_model_score"]) == pytest.approx(best, abs=1e-4)
    assert float(rows[2]["val/delta_m"]) == pytest.approx(best, abs=1e-4)
