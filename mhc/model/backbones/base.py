"""The backbone contract: what every registered backbone declares, and what it then provides.

A backbone maps network input to pooled features ``[B, num_features]``. Its class declares:

* ``modality``: ``"image"`` (float images ``[B, C, H, W]``, already normalised) or ``"tokens"``
  (token ids ``[B, L]``; ``pad_id`` marks padding). A token backbone also has ``vocab_size``,
  ``max_length`` and ``pad_id``.
* ``capabilities``, each with the methods it promises:

  - ``feature_map``: ``forward_map(x) -> [B, D, h, w]`` and ``reduction`` (input pixels per cell);
    the features are the map's ``global_pool`` (``avg``, or ``max``);
  - ``attention``: ``forward_tokens(x, need_weights) -> (tokens [B, L, D], padding [B, L] or
    None, per-layer weights [B, heads, L, L])``, ``encoder`` (an
    :class:`~mhc.model.backbones.attention.Encoder`, whose heads have gates) and
    ``prefix_tokens`` (tokens before the input's own, such as CLS); an image backbone also
    gives ``patch_size`` (its tokens after the prefix are a square grid of patches);
  - ``head_pruning``: ``prune_heads(heads)`` removes attention heads (``heads[l]``: indices in
    layer ``l``), and the ``pruned_heads`` option rebuilds a pruned backbone.

* ``convolutional``: whether convolutions do most of its work (``channels_last`` and the CPU's
  bf16 default follow it).
* ``masked_modeling``: the masked-modeling objectives that can pretrain it, the default first.
* ``own_weights``: the load-time options (``weights``, ``pretrained``) its constructor takes
  itself, for weights published by its library (torchvision's weight enums, timm's or Hugging
  Face's pretrained models); :func:`~mhc.model.backbones.registry.create_backbone` reads the
  others (local state dicts, what ``mhc-pretrain`` saved).

And it may give, through methods with defaults:

* :meth:`Backbone.processing` (a classmethod, from options alone): what its weights expect of
  the input, e.g. the mean and std its pretrained weights were trained with, or its tokenizer;
* :meth:`Backbone.saved_options`: options resolved while it was built that rebuild it with no
  network (a Hugging Face model's config), saved with the model;
* :meth:`Backbone.parameter_depths`: each parameter's depth from the input, for layer-wise
  learning-rate decay and for freezing the first blocks.

Nothing is probed with ``hasattr``: code asks :meth:`Backbone.supports`, and
:func:`check_backbone` verifies, when a backbone is built, that it provides what it declares.
``tests/model/test_backbone_contract.py`` runs every registered backbone through the contract.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Mapping

from torch import Tensor, nn

IMAGE, TOKENS = "image", "tokens"
MODALITIES = (IMAGE, TOKENS)
FEATURE_MAP, ATTENTION, HEAD_PRUNING = "feature_map", "attention", "head_pruning"
CAPABILITIES: dict[str, tuple[str, ...]] = {  # capability -> the attributes it promises
    FEATURE_MAP: ("forward_map", "reduction"),
    ATTENTION: ("forward_tokens", "encoder", "prefix_tokens"),
    HEAD_PRUNING: ("prune_heads",),
}
TOKEN_ATTRIBUTES = ("vocab_size", "max_length", "pad_id")
LOAD_TIME_OPTIONS = ("weights", "pretrained")  # where initial weights come from, not what the backbone is
BLOCK_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


class Backbone(nn.Module):
    """Base class of every backbone; see the module docstring for the contract."""

    modality: ClassVar[str] = IMAGE
    capabilities: ClassVar[frozenset[str]] = frozenset()
    convolutional: ClassVar[bool] = False
    masked_modeling: ClassVar[tuple[str, ...]] = ()
    own_weights: ClassVar[tuple[str, ...]] = ()
    global_pool: str = "avg"  # feature_map backbones: how the map becomes the features
    num_features: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.modality not in MODALITIES:
            raise TypeError(f"{cls.__name__}.modality must be one of {MODALITIES}, got {cls.modality!r}")
        unknown = sorted(set(cls.capabilities) - set(CAPABILITIES))
        if unknown:
            raise TypeError(f"{cls.__name__} declares unknown capabilities {unknown}; known: {sorted(CAPABILITIES)}")
        if HEAD_PRUNING in cls.capabilities and ATTENTION not in cls.capabilities:
            raise TypeError(f"{cls.__name__} declares head_pruning without attention")
        if not set(cls.own_weights) <= set(LOAD_TIME_OPTIONS):
            raise TypeError(f"{cls.__name__}.own_weights must name load-time options {LOAD_TIME_OPTIONS}")

    @classmethod
    def processing(cls, **options: Any) -> dict[str, Any]:
        """What the weights ``options`` describe expect of the input, read from the options alone
        (nothing is built or downloaded): an image backbone's ``mean`` and ``std`` (its pretrained
        weights' normalisation), a token backbone's ``tokenizer``; empty when nothing in particular."""
        return {}

    @classmethod
    def stored_problem(cls, options: Mapping[str, Any]) -> str | None:
        """Why stored options (a checkpoint's or an export's description) would make building this
        backbone open a file or fetch something, else ``None``: rebuilding a saved model reads
        nothing but the description and its weights."""
        return None

    def saved_options(self) -> dict[str, Any]:
        """Options resolved while building that, added to the configured ones, rebuild this
        backbone without a network (a downloaded model's architecture); plain, JSON-able data."""
        return {}

    def parameter_depths(self) -> dict[str, int]:
        """Each parameter's depth from the input: 0 for what comes before the first block (stems,
        embeddings), ``i + 1`` for block ``i``, the number of blocks + 1 for what follows (final
        norms). Read from the names: the first numbered module in a name is its block (``blocks.3.``,
        ``layer.3.``), and parameters of no block are before or after by registration order."""
        depths: dict[str, int] = {}
        deepest = -1
        for name, _ in self.named_parameters():
            found = BLOCK_INDEX.search(name)
            if found:
                deepest = max(deepest, int(found.group(1)))
                depths[name] = int(found.group(1)) + 1
            else:
                depths[name] = -1 if deepest < 0 else -2  # before the first block, or after the last
        last = deepest + 2
        return {name: 0 if d == -1 else last if d == -2 else d for name, d in depths.items()}

    def supports(self, capability: str) -> bool:
        """Whether this backbone declares ``capability`` (``feature_map``, ``attention``, ``head_pruning``)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability '{capability}'; known: {sorted(CAPABILITIES)}")
        return capability in self.capabilities

    def forward(self, x: Tensor) -> Tensor:  # network input -> pooled features [B, num_features]
        raise NotImplementedError


def check_backbone(backbone: nn.Module, name: str) -> Backbone:
    """``backbone`` if it keeps the contract; else a ``TypeError`` naming what it lacks."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone '{name}' is a {type(backbone).__name__}, not a mhc.model.backbones.Backbone")
    promised = [attr for capability in backbone.capabilities for attr in CAPABILITIES[capability]]
    if backbone.modality == TOKENS:
        promised += TOKEN_ATTRIBUTES
    elif ATTENTION in backbone.capabilities:
        promised.append("patch_size")
    missing = [attr for attr in ("num_features", *promised) if not hasattr(backbone, attr)]
    if missing:
        raise TypeError(f"backbone '{name}' ({type(backbone).__name__}) declares {sorted(backbone.capabilities)} "
                        f"but lacks {missing}")
    return backbone
