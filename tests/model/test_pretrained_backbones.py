"""Backbones from timm, torchvision's weights and Hugging Face transformers, checked against the
libraries' own outputs on tiny models built and saved with their own APIs (no network)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.data import resolve_data_config
from transformers import AutoModel, AutoTokenizer

from mhc.errors import CheckpointError, ConfigError
from mhc.model.backbones import create_backbone
from mhc.model.backbones.base import ATTENTION
from mhc.model.backbones.hf_models import config_from_dict, trailing_padding
from mhc.model.backbones.registry import backbone_processing
from mhc.processing.tokenizer import PretrainedTokenizer, tokenizer_from_dict
from tests.pretrained_models import TEXTS, timm_weights


def timm_reference(model: str, path, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """timm's own pre-logit features of the saved model."""
    source = timm.create_model(model, pretrained=False, **kwargs).eval()
    source.load_state_dict(load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path))
    with torch.no_grad():
        return source.forward_head(source.forward_features(x), pre_logits=True)


# -- timm --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_pretrained_file_gives_timms_own_features(tmp_path, suffix):
    path = timm_weights(tmp_path / f"weights{suffix}")  # the classifier is in the file; it is left out
    backbone = create_backbone("timm", model="test_resnet", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), timm_reference("test_resnet", path, x), rtol=0, atol=0)
    random = create_backbone("timm", model="test_resnet", pretrained=False).eval()
    assert not torch.equal(random.state_dict()["model.conv1.0.weight"], backbone.state_dict()["model.conv1.0.weight"])


def test_timm_vit_is_built_at_the_data_size_and_resamples_pretrained_positions(tmp_path):
    path = timm_weights(tmp_path / "vit.pth", "test_vit")  # trained at 160 px
    backbone = create_backbone("timm", model="test_vit", pretrained=str(path), image_size=[32, 32]).eval()
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features)
    saved = torch.load(path)["blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(backbone.state_dict()["model.blocks.0.attn.qkv.weight"], saved)
    assert not backbone.convolutional and backbone.capabilities == {ATTENTION}


def test_timm_processing_is_the_pretrained_normalisation():
    expected = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg("test_vit").to_dict())
    found = backbone_processing({"name": "timm", "model": "test_vit", "pretrained": True})
    assert (found["mean"], found["std"]) == (list(expected["mean"]), list(expected["std"]))
    assert backbone_processing({"name": "timm", "model": "test_vit", "pretrained": False}) == {}


@pytest.mark.parametrize("options, message", [
    ({"model": "convnxt_tiny"}, "timm has no model 'convnxt_tiny'; similar: ['convnext_tiny'"),
    ({"model": "test_resnet", "model_args": {"no_such_option": 1}}, "backbone.model_args: timm model 'test_resnet' does not take them"),
    ({"model": "test_resnet", "pretrained": "missing.pth"}, "backbone.pretrained: no weights file at 'missing.pth'"),
])
def test_timm_bad_options_are_one_config_error(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        create_backbone("timm", **options)


def test_timm_parameter_depths_follow_timms_grouping():
    backbone = create_backbone("timm", model="test_vit", image_size=[32, 32])
    depths = backbone.parameter_depths()
    assert set(depths) == {name for name, _ in backbone.named_parameters()}
    assert depths["model.pos_embed"] == 0 and depths["model.blocks.0.attn.qkv.weight"] == 1
    in_order = list(depths.values())
    assert in_order == sorted(in_order) and depths["model.norm.weight"] == max(in_order) >= len(backbone.model.blocks)


# -- torchvision weights -----------------------------------------------------------------------
def test_torchvision_weights_by_enum_name_load_and_bring_their_normalisation(monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(3)
    published = resnet18().state_dict()
    asked = []
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: asked.append(self) or published)
    backbone = create_backbone("resnet18", weights="IMAGENET1K_V1")
    assert asked == [ResNet18_Weights.IMAGENET1K_V1]
    torch.testing.assert_close(backbone.net.layer1[0].conv1.weight, published["layer1.0.conv1.weight"])
    small = create_backbone("resnet18", weights="DEFAULT", small_input=True)  # a new 3x3 stem, the rest published
    assert small.net.conv1.kernel_size == (3, 3)
    torch.testing.assert_close(small.net.layer4[1].conv2.weight, published["layer4.1.conv2.weight"])
    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert backbone_processing({"name": "resnet18", "weights": "IMAGENET1K_V1"}) == {
        "mean": list(transforms.mean), "std": list(transforms.std)}
    assert backbone_processing({"name": "resnet18"}) == {}


def test_torchvision_weights_name_that_is_no_file_lists_the_names():
    with pytest.raises(ConfigError, match=r"'IMAGENET9' is neither a file nor one of resnet18's torchvision weights \['IMAGENET1K_V1', 'DEFAULT'\]"):
        create_backbone("resnet18", weights="IMAGENET9")


# -- Hugging Face ------------------------------------------------------------------------------
def test_pretrained_tokenizer_encodes_as_transformers_does(bert_folder):
    ours = PretrainedTokenizer.from_pretrained(str(bert_folder))
    theirs = AutoTokenizer.from_pretrained(bert_folder)
    texts = [*TEXTS[:3], "zebras unknown words here and there and more and more"]
    expected = theirs(texts, truncation=True, max_length=10, padding="max_length", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(ours.encode(texts, max_length=10), expected)
    rebuilt = tokenizer_from_dict(ours.to_dict())
    torch.testing.assert_close(rebuilt.encode(texts, max_length=10), expected)
    assert (rebuilt.pad_id, rebuilt.mask_id, rebuilt.vocab_size) == (theirs.pad_token_id, theirs.mask_token_id, len(theirs))
    assert rebuilt.decode(expected[0]) == TEXTS[0]


@pytest.mark.parametrize("change, message", [
    ({"json": "{not json"}, "invalid pretrained tokenizer"),
    ({"json": 5}, "'json' must be a tokenizer.json text"),
    ({"pad_id": 10_000}, "beyond its"),
    ({"pad_id": "0"}, "'pad_id' must be a token id"),
])
def test_stored_pretrained_tokenizer_is_checked(bert_folder, change, message):
    description = {**PretrainedTokenizer.from_pretrained(str(bert_folder)).to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        tokenizer_from_dict(description)


def hf_features(folder, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """transformers' own last hidden states of the saved model, with the padding masked."""
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(~trailing_padding(ids, pad_id)).long()).last_hidden_state


def test_hf_encoder_pools_transformers_hidden_states(bert_folder):
    tokenizer = PretrainedTokenizer.from_pretrained(str(bert_folder))
    ids = tokenizer.encode(TEXTS[:3], max_length=16)
    hidden = hf_features(bert_folder, ids, tokenizer.pad_id)
    real = (ids != tokenizer.pad_id).float()[..., None]
    expected = {"cls": hidden[:, 0], "mean": (hidden * real).sum(1) / real.sum(1),
                "last": hidden[torch.arange(3), (ids != tokenizer.pad_id).sum(1) - 1]}
    for pool, features in expected.items():
        backbone = create_backbone("hf", model=str(bert_folder), pretrained=True, pool=pool, max_length=16,
                                   pad_id=tokenizer.pad_id).eval()
        with torch.no_grad():
            torch.testing.assert_close(backbone(ids), features, rtol=1e-5, atol=1e-5)
    assert backbone.pool == "last" and create_backbone("hf", model=str(bert_folder)).pool == "cls"  # auto: an encoder


def test_hf_encoder_rebuilds_from_its_saved_config_with_no_folder(bert_folder, tmp_path):
    backbone = create_backbone("hf", model=str(bert_folder), pretrained=True, max_length=16).eval()
    saved = backbone.saved_options()
    rebuilt = create_backbone("hf", model=str(tmp_path / "gone"), **saved, max_length=16).eval()
    rebuilt.load_state_dict(backbone.state_dict())
    ids = PretrainedTokenizer.from_pretrained(str(bert_folder)).encode(TEXTS, max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids), backbone(ids), rtol=0, atol=0)
    long, short = (PretrainedTokenizer.from_pretrained(str(bert_folder)).encode(TEXTS[:1], max_length=n) for n in (16, 9))
    with torch.no_grad():
        torch.testing.assert_close(backbone(long), backbone(short))  # padding never changes features


def test_decoder_model_pools_the_last_token_and_pads_with_end_of_text(gpt2_folder):
    tokenizer = PretrainedTokenizer.from_pretrained(str(gpt2_folder))
    assert tokenizer.pad_id == AutoTokenizer.from_pretrained(gpt2_folder).eos_token_id
    backbone = create_backbone("hf", model=str(gpt2_folder), pretrained=True, max_length=16, pad_id=tokenizer.pad_id).eval()
    assert backbone.pool == "last"
    ids = tokenizer.encode(TEXTS[:2], max_length=16)
    hidden = hf_features(gpt2_folder, ids, tokenizer.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(backbone(ids), hidden[torch.arange(2), (ids != tokenizer.pad_id).sum(1) - 1])


def test_trailing_padding_is_the_run_of_pad_ids_at_the_end():
    ids = torch.tensor([[5, 0, 3, 0, 0], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    assert trailing_padding(ids, 0).tolist() == [[False, False, False, True, True], [False] * 5, [True] * 5]


@pytest.mark.parametrize("config, message", [
    ({"model_type": "no_such_model"}, "unknown model_type 'no_such_model'"),
    ({"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}, "would run code from outside transformers"),
    ([1, 2], "must be a mapping"),
])
def test_stored_hf_config_is_checked_before_building(config, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_dict(config)


def test_hf_bad_options_are_one_config_error(bert_folder, tmp_path):
    with pytest.raises(ConfigError, match="data.max_length\\) 100 exceeds the model's 64 positions"):
        create_backbone("hf", model=str(bert_folder), max_length=100)
    with pytest.raises(ConfigError, match="backbone.model: no Hugging Face model at"):
        create_backbone("hf", model=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="backbone.pool must be one of"):
        create_backbone("hf", model=str(bert_folder), pool="max")


# -- published weights that cannot be had ------------------------------------------------------
def test_weights_that_cannot_be_downloaded_are_one_config_error(monkeypatch, tmp_path, bert_folder):
    import timm.models._builder as timm_builder
    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the hub\nand more")

    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", offline)
    with pytest.raises(ConfigError, match=r"backbone.pretrained: timm could not load the weights of 'test_resnet' "
                                          r"\(We couldn't connect to the hub\); without a network, give a local file"):
        create_backbone("timm", model="test_resnet", pretrained=True)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ConfigError, match=r"backbone.weights: torchvision could not load ResNet18_Weights.IMAGENET1K_V1 "
                                          r"\(We couldn't connect to the hub\)"):
        create_backbone("resnet18", weights="DEFAULT")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text((bert_folder / "config.json").read_text())
    with pytest.raises(ConfigError, match=f"backbone.pretrained: could not load the weights of '{config_only}'"):
        create_backbone("hf", model=str(config_only), pretrained=True)


def test_an_encoder_of_the_other_modality_names_the_right_backbone(bert_folder):
    with pytest.raises(ConfigError, match="is a bert model reading input_ids, not pixel_values; use backbone=hf$"):
        create_backbone("hf_vision", model=str(bert_folder))
    vit = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 32}
    with pytest.raises(ConfigError, match="is a vit model reading pixel_values, not input_ids; use backbone=hf_vision$"):
        create_backbone("hf", config=vit)


def test_hf_vision_encoder_gives_transformers_features_at_the_data_size(tmp_path):
    from transformers import ViTModel

    from tests.pretrained_models import vit_folder

    folder = vit_folder(tmp_path / "vit")
    assert backbone_processing({"name": "hf_vision", "model": str(folder), "pretrained": True}) == {
        "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}
    images = torch.randn(2, 3, 48, 48)  # the model was made for 32 px: positions are interpolated
    reference = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = reference(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
    for pool, expected in (("cls", hidden[:, 0]), ("mean", hidden[:, 1:].mean(1))):
        backbone = create_backbone("hf_vision", model=str(folder), pretrained=True, pool=pool).eval()
        with torch.no_grad():
            torch.testing.assert_close(backbone(images), expected, rtol=1e-5, atol=1e-5)
    assert (backbone.prefix_tokens, backbone.patch_size) == (1, 8)
