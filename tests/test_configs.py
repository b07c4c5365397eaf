"""Every option of every config group composes with the train schema; each command has a schema of its own."""

import re
from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from mhc.api import compose_config
from mhc.config import group_options
from mhc.config.schema import SCHEMAS
from mhc.config.values import RULES, check_values
from mhc.errors import ConfigError
from mhc.weighting.base import OPTION_BOUNDS, check_options

GROUPS = ["data", "backbone", "head", "loss", "weighting", "objective", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "experiment"]
REQUIRED = {
    "data": {"manifest": ["data.train=x.csv"], "cifar100": ["data.root=x"], "celeba": ["data.root=x"]},
    "experiment": {"cifar100_resnet18": ["data.root=x"], "celeba_resnet18": ["data.root=x"]},
}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}", *REQUIRED.get(group, {}).get(option, [])]
    if (group, option) == ("data", "checkpoint"):  # the data a checkpoint records: for the commands that read one
        cfg = compose_config("eval", [*overrides, "ckpt=x.ckpt"], output_dir="/tmp/x")
        assert cfg.data.from_checkpoint
        return
    cfg = compose_config("train", overrides, output_dir="/tmp/x")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "data":
        assert cfg.data._target_.startswith("mhc.data.")


@pytest.mark.parametrize("name", ["train", "eval", "predict", "analyze", "prune", "pretrain"])
def test_entry_configs_compose(name):
    cfg = compose_config(name, [] if name in ("train", "pretrain") else ["ckpt=x.ckpt"], output_dir="/tmp/x")
    assert cfg.task_name == name
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


COMMAND_OPTIONS = {  # an option of one command, refused by the others
    "train": "weighting=pcgrad", "pretrain": "output=x", "eval": "split=val", "analyze": "pattern_threshold=0.3",
    "prune": "fraction=0.5", "export": "format=onnx",
}


@pytest.mark.parametrize("command", ["train", "pretrain", "eval", "predict", "analyze", "prune", "export"])
def test_each_command_refuses_the_options_of_others(command):
    from hydra.errors import ConfigCompositionException

    base = [] if command in ("train", "pretrain") else ["ckpt=x.ckpt"]
    schema = SCHEMAS[command]
    for option in COMMAND_OPTIONS.values():
        key = option.split("=")[0]
        if key in {f.name for f in fields(schema)}:
            continue  # an option this command has too
        with pytest.raises(ConfigCompositionException, match=f"Could not (override|find) '{key}"):
            compose_config(command, [*base, option], output_dir="/tmp/x")
    with pytest.raises(ConfigError, match=rf"unknown config key\(s\) \['fraktion'\] for mhc-{command}"):
        compose_config(command, [*base, "+fraktion=0.5"], output_dir="/tmp/x")


def test_experiment_selects_data_tasks_and_overrides():
    cfg = compose_config("train", ["experiment=cifar100_resnet18", "data.root=x"], output_dir="/tmp/x")
    assert cfg.data._target_ == "mhc.data.Cifar100DataModule"
    assert set(cfg.tasks) == {"coarse", "fine"} and cfg.tasks.fine.label_smoothing == 0.1
    assert cfg.backbone.name == "resnet18" and cfg.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.parametrize(("overrides", "data"), [
    (["backbone=seq_tiny"], "mhc.data.SequencesDataModule"),
    (["backbone=seq_small", "data=manifest", "data.train=x.csv"], "mhc.data.ManifestDataModule"),
    (["backbone=vit_tiny"], "mhc.data.ScenesDataModule"),
])
def test_sequence_backbones_default_to_the_built_in_sequences(overrides, data):
    cfg = compose_config("train", overrides, output_dir="/tmp/x")
    assert cfg.data._target_ == data
    if data.endswith("SequencesDataModule"):
        assert set(cfg.tasks) == {"first", "before", "majority", "ordered"}


def test_cpu_precision_follows_the_hardware(tmp_path):
    from mhc.training.precision import native_bf16_cpu

    with_bf16, without = tmp_path / "zen4", tmp_path / "avx2"
    with_bf16.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert native_bf16_cpu(with_bf16) and not native_bf16_cpu(without)
    assert not native_bf16_cpu(tmp_path / "absent")  # not Linux: full precision


def test_default_cpu_precision_is_bf16_for_convolutional_backbones_only(monkeypatch, tmp_path):
    import mhc.training.precision as precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    assert precision.cpu_precision("cnn") == "bf16-mixed" == precision.cpu_precision("resnet18")
    assert precision.cpu_precision("vit_tiny") == "32-true" == precision.cpu_precision("seq_small")
    assert precision.cpu_precision("no_such_backbone") == "32-true"  # its error comes where it is built
    # a timm model is convolutional or not by its model, read from the composed backbone options
    for model, expected in (("test_resnet", "bf16-mixed"), ("test_vit", "32-true")):
        cfg = compose_config("train", ["backbone=timm", f"backbone.model={model}"], output_dir=tmp_path)
        assert cfg.trainer.precision == expected, model
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    assert precision.cpu_precision("cnn") == "32-true"


def test_default_precision_follows_the_accelerator(monkeypatch):
    import torch

    import mhc.training.precision as precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(precision, "gpu_precision", lambda: "gpu rule")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.default_precision("auto", "cnn") == "gpu rule"  # auto with CUDA present trains on the GPU
    assert precision.default_precision("cpu", "cnn") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.default_precision("auto", "cnn") == "32-true"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_gpu_precision_is_bf16_where_the_gpu_computes_in_it(monkeypatch, bf16, expected):
    import torch

    import mhc.training.precision as precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert precision.default_precision("gpu", "vit_tiny") == expected == precision.default_precision("cuda", "cnn")


def test_trainer_precision_resolves_from_accelerator_and_backbone(monkeypatch):
    import mhc.training.precision as precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(precision, "gpu_precision", lambda: "bf16-mixed")
    cfg = compose_config("train", ["trainer.accelerator=gpu"], output_dir="/tmp/x")
    assert cfg.trainer.precision == "bf16-mixed"
    cfg = compose_config("train", ["trainer.accelerator=cpu", "backbone=vit_tiny"], output_dir="/tmp/x")
    assert cfg.trainer.precision == "32-true"


@pytest.mark.parametrize("key", sorted(RULES))
def test_every_value_rule_refuses_a_bad_value_naming_the_key(key):
    check, _ = RULES[key]
    bad = next(v for v in (-5, 1.5, [0], [-1.0], 2**40, "x") if not check(v))
    cfg = OmegaConf.create({})
    OmegaConf.update(cfg, key, bad, force_add=True)
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} must be .*, got {re.escape(repr(bad))}$"):
        check_values(cfg)


@pytest.mark.parametrize("option", sorted(OPTION_BOUNDS))
def test_every_weighting_option_bound_is_enforced(option):
    low, inclusive, high = OPTION_BOUNDS[option]
    check_options("m", {option: low if inclusive else low + 0.5})
    with pytest.raises(ConfigError, match=f"^weighting=m: {option} must be "):
        check_options("m", {option: low - 1})
    if high is not None:
        with pytest.raises(ConfigError, match=f"^weighting=m: {option} must be "):
            check_options("m", {option: high + 1})


def test_the_packaged_defaults_pass_the_value_checks():
    for command in ("train", "pretrain", "eval", "predict"):
        compose_config(command, [], output_dir="unused")  # composing runs every check
