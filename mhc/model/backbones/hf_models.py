"""Hugging Face models as backbones: text encoders (``backbone=hf backbone.model=distilbert-base-uncased``)
and vision encoders (``backbone=hf_vision backbone.model=facebook/dinov2-small``).

Any ``transformers.AutoModel`` that reads token ids (BERT, DistilBERT, RoBERTa, DeBERTa, or a
decoder such as GPT-2 or Llama), from a hub name or a local folder, reads texts through the
model's own fast tokenizer (:class:`~mhc.processing.tokenizer.PretrainedTokenizer`), which the
processor saves with the model. Features are the model's last hidden states, pooled:

* ``cls``: the first token's (BERT's [CLS], RoBERTa's <s>);
* ``mean``: the mean over real tokens (the attention mask);
* ``last``: the last real token's, for decoder models, whose last token is the only one that has
  seen the whole text;
* ``auto``: ``last`` for decoder-only models, else ``cls``.

Padding is the run of the tokenizer's ``pad_id`` at the end of each row; the attention mask
the model gets masks exactly that run, so padding never changes features.

A vision encoder (ViT, DINOv2, CLIP's vision tower, ...) reads images at the data's size (its
position embeddings interpolated) and pools the [CLS] token, the mean of its patch tokens, or
its own ``pooler_output``; its pretrained weights bring their normalisation (the model's
image processor config).

Both show their attention to ``mhc-analyze`` where the layers are of a known family: weights
from the model's eager attention, and head importance through gates on each layer's output
projection (:mod:`mhc.model.backbones.attention_views`).

``pretrained`` takes the model's published weights (``true``: downloaded once, then read from
Hugging Face's cache; or a local folder). The model's config travels with the checkpoint as
plain data (``config``), so ``mhc.load`` rebuilds the architecture with no network and never
runs code from a model repository.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from mhc.errors import CheckpointError, ConfigError, first_line
from mhc.model.backbones.attention import pool_tokens
from mhc.model.backbones.attention_views import EncoderView, encoder_view, hf_layers
from mhc.model.backbones.base import ATTENTION, IMAGE, TOKENS, Backbone
from mhc.model.backbones.registry import register_backbone
from mhc.processing.tokenizer import PretrainedTokenizer

POOLS = ("auto", "cls", "mean", "last")
# Keys of a stored config that would make transformers fetch or run code from elsewhere.
REFUSED_CONFIG_KEYS = ("auto_map", "trust_remote_code")


def hf_config(model: str | None, config: Mapping[str, Any] | None) -> Any:
    """The model's ``transformers`` config: rebuilt from stored plain data (``config``, no
    network), else read from ``model`` (a local folder, or the hub and its cache)."""
    from transformers import AutoConfig

    if config is not None:
        return config_from_dict(config)
    if not model:
        raise ConfigError("backbone.model: give a Hugging Face model (a hub name such as distilbert-base-uncased, or a folder)")
    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ConfigError(f"backbone.model: no Hugging Face model at '{model}' ({' '.join(str(err).split())[:300]})") from None


def config_from_dict(config: Mapping[str, Any]) -> Any:
    """A ``transformers`` config from stored data, checked first: a known ``model_type`` and
    no key that points at code outside ``transformers``."""
    from transformers import CONFIG_MAPPING

    if not isinstance(config, Mapping):
        raise CheckpointError(f"backbone.config must be a mapping, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"backbone.config: unknown model_type {model_type!r} for this transformers version")
    refused = [key for key in REFUSED_CONFIG_KEYS if config.get(key)]
    if refused:
        raise CheckpointError(f"backbone.config: {refused} would run code from outside transformers; refused")
    options = {key: value for key, value in config.items() if key != "model_type"}
    return CONFIG_MAPPING[model_type](**options)


def is_decoder_only(config: Any) -> bool:
    """Whether a model reads left to right only (a causal LM with no masked-LM form)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def trailing_padding(ids: Tensor, pad_id: int) -> Tensor:
    """Bool ``[B, L]``, True on the run of ``pad_id`` that ends each row (right padding); a pad
    id inside the text (a decoder's end-of-text used as padding) stays a token."""
    positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)
    length = ((ids != pad_id) * positions).amax(dim=1, keepdim=True)  # 1 + the last non-pad position
    return positions > length


def quietly(load: Any, *args: Any, **kwargs: Any) -> Any:
    """``load(*args, **kwargs)`` without transformers' progress bars (one per process and load)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class HFEncoder(Backbone):
    """What the text and vision encoders share: the model from a config or a folder, its
    pretrained weights, its config saved with checkpoints, and its attention heads."""

    own_weights = ("pretrained",)

    @classmethod
    def stored_problem(cls, options: Mapping[str, Any]) -> str | None:
        if options.get("config") is None:
            return "it has no 'config', so the model's architecture would be read from 'model' (a folder or the hub)"
        return None
    pools: tuple[str, ...] = ()

    def __init__(self, model: str | None, pretrained: bool | str, pool: str, config: Mapping[str, Any] | None,
                 attn_implementation: str) -> None:
        super().__init__()
        from transformers import AutoModel

        if pool not in self.pools:
            raise ConfigError(f"backbone.pool must be one of {list(self.pools)}, got '{pool}'")
        settings = hf_config(model, config)
        settings = getattr(settings, "vision_config" if self.modality == IMAGE else "text_config", None) or settings
        settings._attn_implementation = attn_implementation
        if pretrained:
            source = str(pretrained) if isinstance(pretrained, str) else model
            if isinstance(pretrained, str) and not Path(pretrained).is_dir():
                raise ConfigError(f"backbone.pretrained: no Hugging Face model folder at '{pretrained}'")
            try:
                self.model = quietly(AutoModel.from_pretrained, source, config=settings).train()  # loaded in eval mode
            except (OSError, ValueError) as err:
                raise ConfigError(f"backbone.pretrained: could not load the weights of '{source}' ({first_line(err)}); "
                                  "without a network, give a folder saved with save_pretrained: backbone.model=path") from None
        else:
            self.model = AutoModel.from_config(settings)
        reads = "pixel_values" if self.modality == IMAGE else "input_ids"
        if self.model.main_input_name != reads:
            other = "hf" if self.modality == IMAGE else "hf_vision"
            raise ConfigError(f"backbone.model: '{model or settings.model_type}' is a {settings.model_type} model reading "
                              f"{self.model.main_input_name}, not {reads}; use backbone={other}")
        self.settings = settings
        self.num_features = int(settings.hidden_size)
        if self.encoder is not None:
            self.capabilities = frozenset({ATTENTION})

    def saved_options(self) -> dict[str, Any]:
        """The model's config as plain data, so a checkpoint rebuilds it with no network."""
        config = self.model.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "architectures", "_attn_implementation_autoset"):
            config.pop(key, None)
        return {"config": config, "pool": self.pool}

    @property
    def encoder(self) -> EncoderView | None:
        """The model's attention heads, for analysis (``None`` where its layers are not known)."""
        heads = getattr(self.settings, "num_attention_heads", None) or getattr(self.settings, "n_head", None)
        depth = getattr(self.settings, "num_hidden_layers", None) or getattr(self.settings, "n_layer", None)
        layers = hf_layers(self.model, depth) if heads and depth else None
        if layers is None:
            return None
        return encoder_view(layers, heads, getattr(self.settings, "head_dim", None) or self.num_features // heads)

    def run(self, need_weights: bool, **inputs: Tensor) -> Any:
        """The model's output; with ``need_weights``, through eager attention, which returns them."""
        if not need_weights:
            return self.model(**inputs)
        implementation = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            return self.model(**inputs, output_attentions=True)
        finally:
            self.model.set_attn_implementation(implementation)


@register_backbone("hf")
class HFTextEncoder(HFEncoder):
    """A ``transformers`` encoder (or decoder) over token ids ``[B, L]`` -> pooled features ``[B, hidden]``.

    Args:
        model: a hub name or a local folder (its ``config.json``, weights and tokenizer).
        pretrained: ``true`` for the model's weights, a folder of weights, or ``false`` (random init).
        pool: ``auto``, ``cls``, ``mean`` or ``last`` (see the module docstring).
        max_length: the longest token sequence; training sets it to the data's ``max_length``.
        pad_id: the tokenizer's padding id; training sets it from the tokenizer.
        tokenizer: where the tokenizer comes from, if not ``model``.
        config: the model's config as plain data (saved with checkpoints; rebuilds with no network).
        attn_implementation: ``sdpa`` (fused attention) or ``eager``.
    """

    modality = TOKENS
    pools = POOLS
    prefix_tokens = 0  # a text's special tokens ([CLS]) are its own tokens

    def __init__(
        self,
        model: str | None = None,
        pretrained: bool | str = False,
        pool: str = "auto",
        max_length: int | None = None,
        pad_id: int | None = None,
        tokenizer: str | None = None,
        config: Mapping[str, Any] | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__(model, pretrained, pool, config, attn_implementation)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's [CLS] dense+tanh is left unused; pooling is ours
        self.pool = ("last" if is_decoder_only(self.settings) else "cls") if pool == "auto" else pool
        limit = getattr(self.settings, "max_position_embeddings", None)
        self.max_length = int(max_length or limit or 512)
        if limit is not None and self.max_length > limit:
            raise ConfigError(f"backbone.max_length (data.max_length) {self.max_length} exceeds the model's "
                              f"{limit} positions")
        self.pad_id = int(pad_id if pad_id is not None else (self.settings.pad_token_id or 0))

    @classmethod
    def processing(cls, model: str | None = None, tokenizer: str | None = None, **options: Any) -> dict[str, Any]:
        """The model's own tokenizer."""
        source = tokenizer or model
        return {"tokenizer": PretrainedTokenizer.from_pretrained(source)} if source else {}

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    def forward_tokens(self, ids: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Token features ``[B, L, hidden]``, the padding ``[B, L]`` and, if asked, the per-layer
        attention weights ``[B, heads, L, L]``."""
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_length {self.max_length}")
        padding = trailing_padding(ids, self.pad_id)
        output = self.run(need_weights, input_ids=ids, attention_mask=(~padding).long())
        return output.last_hidden_state, padding, list(output.attentions or []) if need_weights else []

    def forward(self, ids: Tensor) -> Tensor:  # [B, L] -> [B, hidden]
        tokens, padding, _ = self.forward_tokens(ids)
        return pool_tokens(tokens, padding, self.pool)


@register_backbone("hf_vision")
class HFVisionEncoder(HFEncoder):
    """A ``transformers`` vision encoder over images ``[B, 3, H, W]`` -> pooled features ``[B, hidden]``.

    Args:
        model: a hub name or a local folder (its ``config.json``, weights, image processor config).
        pretrained: ``true`` for the model's weights, a folder of weights, or ``false`` (random init).
        pool: ``cls`` (the [CLS] token's final features), ``mean`` (of the patch tokens) or
            ``pooler`` (the model's ``pooler_output``, e.g. CLIP's post-norm [CLS]).
        config: the model's config as plain data (saved with checkpoints; rebuilds with no network).
        attn_implementation: ``sdpa`` (fused attention) or ``eager``.
    """

    modality = IMAGE
    pools = ("cls", "mean", "pooler")

    def __init__(
        self,
        model: str | None = None,
        pretrained: bool | str = False,
        pool: str = "cls",
        config: Mapping[str, Any] | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__(model, pretrained, pool, config, attn_implementation)
        self.pool = pool
        if pool != "pooler" and getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # left unused
        self.interpolates = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    @classmethod
    def processing(cls, model: str | None = None, pretrained: bool | str = False, **options: Any) -> dict[str, Any]:
        """Pretrained weights' normalisation, from the model's image processor config."""
        if not pretrained or not model:
            return {}
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(model)
        except (OSError, ValueError):
            return {}
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        return {"mean": list(mean), "std": list(std)} if mean and std else {}

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: [CLS] and any register tokens."""
        return 1 + int(getattr(self.settings, "num_register_tokens", 0) or 0)

    @property
    def patch_size(self) -> int:
        size = self.settings.patch_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def output(self, images: Tensor, need_weights: bool = False) -> Any:
        return self.run(need_weights, pixel_values=images, **({"interpolate_pos_encoding": True} if self.interpolates else {}))

    def forward_tokens(self, images: Tensor, need_weights: bool = False) -> tuple[Tensor, None, list[Tensor]]:
        """Token features ``[B, prefix + patches, hidden]`` and, if asked, the per-layer attention weights."""
        output = self.output(images, need_weights)
        return output.last_hidden_state, None, list(output.attentions or []) if need_weights else []

    def forward(self, images: Tensor) -> Tensor:  # [B, 3, H, W] -> [B, hidden]
        output = self.output(images)
        if self.pool == "pooler":
            return output.pooler_output
        if self.pool == "mean":
            return output.last_hidden_state[:, self.prefix_tokens:].mean(dim=1)
        return output.last_hidden_state[:, 0]
