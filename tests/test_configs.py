"""Every option of every config group composes with the train schema."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mhc.cli.common import CONFIG_PATH

GROUPS = ["data", "backbone", "head", "loss", "weighting", "objective", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "experiment"]
REQUIRED = {
    "data": {"manifest": ["data.train=x.csv"], "cifar100": ["data.root=x"], "celeba": ["data.root=x"]},
    "experiment": {"cifar100_resnet18": ["data.root=x"], "celeba_resnet18": ["data.root=x"]},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_PATH) / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}", *REQUIRED.get(group, {}).get(option, [])]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/x"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "data":
        assert cfg.data._target_.startswith("mhc.data.")


@pytest.mark.parametrize("name", ["train", "eval", "predict", "analyze", "prune", "pretrain"])
def test_entry_configs_compose(name):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(name, overrides=["ckpt=x.ckpt", "paths.output_dir=/tmp/x"] if name != "train" else [])
    assert cfg.task_name == name


def test_experiment_selects_data_tasks_and_overrides():
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cifar100_resnet18", "data.root=x", "paths.output_dir=/tmp/x"])
    assert cfg.data._target_ == "mhc.data.Cifar100DataModule"
    assert set(cfg.tasks) == {"coarse", "fine", "masked"} and cfg.tasks.fine.label_smoothing == 0.1
    assert cfg.backbone.name == "resnet18" and cfg.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.parametrize(("overrides", "data"), [
    (["backbone=seq_tiny"], "mhc.data.SequencesDataModule"),
    (["backbone=seq_small", "data=manifest", "data.train=x.csv"], "mhc.data.ManifestDataModule"),
    (["backbone=vit_tiny"], "mhc.data.ScenesDataModule"),
])
def test_sequence_backbones_default_to_the_built_in_sequences(overrides, data):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/x"])
    assert cfg.data._target_ == data
    if data.endswith("SequencesDataModule"):
        assert set(cfg.tasks) == {"first", "before", "majority", "ordered", "masked"}


def test_cpu_precision_follows_the_hardware(tmp_path):
    from mhc.config import native_bf16_cpu

    with_bf16, without = tmp_path / "zen4", tmp_path / "avx2"
    with_bf16.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert native_bf16_cpu(with_bf16) and not native_bf16_cpu(without)
    assert not native_bf16_cpu(tmp_path / "absent")  # not Linux: full precision


def test_default_cpu_precision_is_bf16_for_convolutional_backbones_only(monkeypatch):
    import mhc.config as config

    monkeypatch.setattr(config, "native_bf16_cpu", lambda: True)
    assert config.cpu_precision("cnn") == "bf16-mixed" == config.cpu_precision("resnet18")
    assert config.cpu_precision("vit_tiny") == "32-true" == config.cpu_precision("seq_small")
    assert config.cpu_precision("no_such_backbone") == "32-true"  # its error comes where it is built
    monkeypatch.setattr(config, "native_bf16_cpu", lambda: False)
    assert config.cpu_precision("cnn") == "32-true"
