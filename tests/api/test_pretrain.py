"""``mhc-pretrain``, and fine-tuning from its output with ``backbone.pretrained``."""

import pytest
import torch
from safetensors.torch import load_file

from mhc.api import compose_config, pretrain
from mhc.api.build import build_datamodule, build_module
from mhc.errors import CheckpointError

SMALL_DATA = ["data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=32"]
TINY_VIT = ["backbone=vit_tiny", "backbone.image_size=64", "backbone.patch_size=16", "backbone.dim=16",
            "backbone.depth=1", "backbone.num_heads=2"]
TINY_SEQ = ["backbone=seq_tiny", "backbone.dim=16", "backbone.depth=1", "backbone.num_heads=2"]


def config(name: str, out, *overrides: str):
    return compose_config(name, [*SMALL_DATA, "trainer.max_epochs=1", "~callbacks.progress_bar", *overrides], output_dir=out)


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae")
    result = pretrain(config("pretrain", out, *TINY_VIT, "objective.mae.decoder_dim=16", "objective.mae.decoder_depth=1"))
    assert result.objective == "mae" and "val/loss" in result.metrics
    return out, result.output


def test_mae_pretraining_saves_the_backbone_and_reconstructions(pretrained_vit):
    out, folder = pretrained_vit
    assert (folder / "backbone.safetensors").is_file() and (folder / "backbone.json").is_file()
    assert list((out / "csv").glob("version_*/reconstructions/epoch000.png"))
    assert (out / "checkpoints" / "last.ckpt").is_file()
    keys = load_file(str(folder / "backbone.safetensors")).keys()
    assert "patch_embed.weight" in keys and not any(k.startswith("decoder") for k in keys)  # the decoder stays behind


def test_fine_tuning_starts_from_the_pretrained_weights_bit_for_bit(pretrained_vit, tmp_path):
    _, folder = pretrained_vit
    cfg = config("train", tmp_path, *TINY_VIT, f"backbone.pretrained={folder}")
    module = build_module(cfg, build_datamodule(cfg))
    saved = load_file(str(folder / "backbone.safetensors"))
    state = module.net.backbone.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert "pretrained" not in module.net.config()["backbone"]  # checkpoints do not depend on the folder


def test_a_pretrained_backbone_of_another_size_is_one_clear_error(pretrained_vit, tmp_path):
    _, folder = pretrained_vit
    cfg = config("train", tmp_path, *TINY_VIT, "backbone.dim=32", f"backbone.pretrained={folder}")
    with pytest.raises(CheckpointError) as info:
        build_module(cfg, build_datamodule(cfg))
    message = str(info.value)
    assert "dim: pretrained 16, configured 32" in message and "shape mismatches ['cls_token [1, 1, 16] vs [1, 1, 32]'" in message
    cfg = config("train", tmp_path, *TINY_SEQ, f"backbone.pretrained={folder}")
    with pytest.raises(CheckpointError, match=r"name: pretrained 'vit_tiny', configured 'seq_tiny'.*missing keys \['embed.weight'"):
        build_module(cfg, build_datamodule(cfg))


def test_masked_token_pretraining_of_the_sequence_transformer(tmp_path):
    folder = pretrain(config("pretrain", tmp_path, *TINY_SEQ)).output
    description = (folder / "backbone.json").read_text()
    assert '"objective": "masked_tokens"' in description and '"vocab_size": 21' in description
    cfg = config("train", tmp_path / "ft", *TINY_SEQ, f"backbone.pretrained={folder}")
    module = build_module(cfg, build_datamodule(cfg))
    assert torch.equal(module.net.backbone.embed.weight, load_file(str(folder / "backbone.safetensors"))["embed.weight"])


def test_masked_modeling_as_an_auxiliary_task_of_supervised_training(tmp_path):
    from mhc.api import train

    cfg = config("train", tmp_path, *TINY_VIT, "auxiliary=masked_modeling", "auxiliary.masked_modeling.weight=0.3",
                 "objective.mae.decoder_dim=16", "objective.mae.decoder_depth=1", "data.missing_fraction=0.5", "test=false")
    module = build_module(cfg, build_datamodule(cfg))
    assert "masked_modeling" not in module.tasks and module.auxiliary_weights == {"masked_modeling": 0.3}
    assert module.auxiliary["masked_modeling"].backbone is module.net.backbone  # one shared backbone
    train(cfg)
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/masked_modeling/loss" in metrics and "val/masked_modeling/loss" in metrics


@pytest.mark.parametrize("override, message", [
    ("auxiliary.masked_modeling.loss=focal", "Key 'loss' not in 'AuxiliaryOptions'"),
    ("+auxiliary.jigsaw.weight=1", "Error merging override +auxiliary.jigsaw.weight=1"),
])
def test_auxiliary_options_are_checked(tmp_path, override, message):
    from hydra.errors import ConfigCompositionException

    from mhc.errors import ConfigError

    with pytest.raises((ConfigError, ConfigCompositionException)) as caught:
        cfg = config("train", tmp_path, *TINY_VIT, "auxiliary=masked_modeling", override)
        build_module(cfg, build_datamodule(cfg))
    assert message in str(caught.value) + str(caught.value.__cause__)


def test_an_unknown_auxiliary_objective_from_a_config_file_is_one_error():
    from omegaconf import OmegaConf

    from mhc.api.build import auxiliary_tasks
    from mhc.errors import ConfigError

    cfg = OmegaConf.create({"auxiliary": {"jigsaw": {"weight": 1.0}}, "objective": {"name": "auto"}})
    with pytest.raises(ConfigError, match=r"auxiliary.jigsaw: unknown auxiliary objective; expected one of \['masked_modeling'\]"):
        auxiliary_tasks(cfg)


def test_no_auxiliary_objective_by_default(tmp_path):
    cfg = config("train", tmp_path, *TINY_VIT)
    assert not cfg.auxiliary and not build_module(cfg, build_datamodule(cfg)).auxiliary


def test_simmim_pretraining_of_the_compact_cnn(tmp_path):
    folder = pretrain(config("pretrain", tmp_path, "backbone=cnn", "backbone.widths=[8,16]")).output
    assert '"objective": "simmim"' in (folder / "backbone.json").read_text()
    assert list((tmp_path / "csv").glob("version_*/reconstructions/epoch000.png"))
    cfg = config("train", tmp_path / "ft", "backbone=cnn", "backbone.widths=[8,16]", f"backbone.pretrained={folder}")
    module = build_module(cfg, build_datamodule(cfg))
    saved = load_file(str(folder / "backbone.safetensors"))
    assert all(torch.equal(module.net.backbone.state_dict()[k], v) for k, v in saved.items())
