"""Any timm model as a backbone: ``backbone=timm backbone.model=convnext_tiny``.

Features are timm's own pooled pre-logits, ``forward_head(forward_features(x), pre_logits=True)``
of the model built with ``num_classes=0``, so pooling and final norms are the model's.

``pretrained`` takes timm's weights the way timm resolves them: ``true`` for the model's
published weights (the Hugging Face Hub, or timm's cache when offline), a local file (a
state dict, read weights-only) or what ``mhc-pretrain`` saved. A checkpoint holds the weights,
so loading it never downloads. Published weights bring their normalisation
(``timm.data.resolve_data_config``), which the processor takes; a model of a fixed input size
(ViTs) is built at the data's image size, its position embeddings resampled by timm.

timm's ViTs (``vit_*``, ``deit_*``, ``eva*``...) also show their attention to ``mhc-analyze``:
per-layer weights from timm's explicit attention, and head importance through gates on each
layer's output projection (:mod:`mhc.model.backbones.attention_views`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from mhc.errors import ConfigError, first_line
from mhc.model.backbones.attention_views import EncoderView, encoder_view, is_timm_vit, timm_attention_weights
from mhc.model.backbones.base import ATTENTION, FEATURE_MAP, Backbone
from mhc.model.backbones.registry import register_backbone


def pretrained_config(model: str) -> dict[str, Any]:
    """timm's pretrained config of ``model`` (``convnext_tiny`` or ``convnext_tiny.fb_in1k``);
    an unknown name is a :class:`ConfigError` with the closest names timm has."""
    import timm

    found = timm.get_pretrained_cfg(model) if timm.is_model(model.split(".")[0]) else None
    if found is None:
        import difflib

        close = difflib.get_close_matches(model.split(".")[0], timm.list_models(), n=5, cutoff=0.7)
        raise ConfigError(f"backbone.model: timm has no model '{model}'" + (f"; similar: {close}" if close else ""))
    return found.to_dict()


@register_backbone("timm")
class TimmBackbone(Backbone):
    """A timm model without its classifier: pooled features ``[B, model.num_features]``.

    Args:
        model: a timm model name, with an optional pretrained tag (``resnet50.a1_in1k``).
        pretrained: ``true`` for timm's published weights, or a local weights file.
        image_size: ``[H, W]`` (or one side) for models of a fixed input size; training sets it
            to the data's.
        in_chans: input channels (timm adapts pretrained stems).
        drop_path_rate: stochastic depth, where the model has it.
        model_args: other keyword arguments of the timm model.
    """

    own_weights = ("pretrained",)
    file_arguments = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # timm reads files from them

    @classmethod
    def stored_problem(cls, options: Mapping[str, Any]) -> str | None:
        named = sorted(set(options.get("model_args") or {}) & set(cls.file_arguments))
        return f"model_args {named} name files for timm to read" if named else None

    def __init__(
        self,
        model: str = "resnet50",
        pretrained: bool | str = False,
        image_size: Sequence[int] | int | None = None,
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        model_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        config = pretrained_config(model)
        args = dict(model_args or {})
        if drop_path_rate is not None:
            args["drop_path_rate"] = float(drop_path_rate)
        if image_size is not None and config.get("fixed_input_size"):
            args["img_size"] = tuple(image_size) if isinstance(image_size, Sequence) else int(image_size)
        if isinstance(pretrained, str):
            if not Path(pretrained).is_file():
                raise ConfigError(f"backbone.pretrained: no weights file at '{pretrained}'")
            args["pretrained_cfg_overlay"] = {"file": str(pretrained)}
        try:
            self.model = timm.create_model(model, pretrained=bool(pretrained), num_classes=0, in_chans=in_chans, **args)
        except TypeError as err:
            raise ConfigError(f"backbone.model_args: timm model '{model}' does not take them ({err})") from None
        except (OSError, RuntimeError, ValueError) as err:  # a download or a weights file that failed
            if not pretrained:
                raise
            raise ConfigError(f"backbone.pretrained: timm could not load the weights of '{model}' ({first_line(err)}); "
                              "without a network, give a local file: backbone.pretrained=path/to/weights.safetensors") from None
        self.num_features = int(self.model.num_features)
        # What the network is, from timm's description: CNNs give feature maps, ViTs tokens.
        self.convolutional = config.get("pool_size") is not None
        self.capabilities = frozenset({FEATURE_MAP}) if self.convolutional else frozenset()
        if is_timm_vit(self.model):
            self.capabilities = frozenset({ATTENTION})

    @classmethod
    def processing(cls, model: str = "resnet50", pretrained: bool | str = False, **options: Any) -> dict[str, Any]:
        """Pretrained weights' normalisation, as ``timm.data.resolve_data_config`` gives it."""
        if not pretrained:
            return {}
        from timm.data import resolve_data_config

        data = resolve_data_config(pretrained_cfg=pretrained_config(model))
        return {"mean": list(data["mean"]), "std": list(data["std"])}

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along each side (timm's ``feature_info``)."""
        return int(self.model.feature_info[-1]["reduction"])

    @property
    def encoder(self) -> EncoderView | None:
        """The ViT's attention heads, for analysis (``None`` for other models)."""
        blocks = self.model.blocks
        return encoder_view(blocks, blocks[0].attn.num_heads, blocks[0].attn.head_dim) if is_timm_vit(self.model) else None

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches (CLS, registers)."""
        return int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    def forward_tokens(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, None, list[Tensor]]:
        """Token features ``[B, prefix + patches, D]`` (after the final norm) and, if asked, the
        per-layer attention weights ``[B, H, L, L]``."""
        if not need_weights:
            return self.model.forward_features(x), None, []
        with timm_attention_weights(self.model.blocks) as maps:
            tokens = self.model.forward_features(x)
        return tokens, None, maps

    def forward_map(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, D, H / reduction, W / reduction]
        return self.model.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, num_features]
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def parameter_depths(self) -> dict[str, int]:
        """timm's own grouping of the model into blocks (``group_matcher``), stem first."""
        from timm.models import group_parameters

        groups = group_parameters(self.model, self.model.group_matcher(coarse=False))
        return {f"model.{name}": depth for depth, names in enumerate(groups.values()) for name in names}
