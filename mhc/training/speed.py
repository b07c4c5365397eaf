"""Speed options of a training run (``perf.*`` in the config; measured in docs/benchmarks.md).

Each leaves the results the same up to floating-point rounding and the checkpoint format
unchanged: parameter names and shapes stay as they are, so a checkpoint trained with any of
them loads anywhere. Mixed precision is Lightning's (``trainer.precision=bf16-mixed``).
"""

from __future__ import annotations

import torch

from mhc.errors import ConfigError
from mhc.model.net import MultiHeadNet

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def has_convolutional_backbone(net: MultiHeadNet) -> bool:
    """Whether ``net`` reads images with a CNN (where channels_last pays)."""
    return net.backbone.convolutional


def apply_speed_options(net: MultiHeadNet, channels_last: bool | str = "auto", compile: bool | str = False,
                        fuse_heads: bool = True) -> None:
    """Set ``net`` up for speed, in place.

    channels_last: NHWC weights and inputs, which oneDNN and cuDNN convolutions prefer; ``auto``
        turns it on for convolutional backbones only.
    compile: ``torch.compile`` the backbone (``true``, or a mode such as ``max-autotune``); the
        first steps pay for the compilation.
    fuse_heads: single-linear heads share one matmul (:func:`mhc.model.heads.fused_head_logits`).
    """
    if channels_last not in (True, False, "auto"):
        raise ConfigError(f"perf.channels_last must be true, false or auto, got '{channels_last}'")
    if channels_last == "auto":
        channels_last = has_convolutional_backbone(net)
    if channels_last:
        if net.takes_tokens:
            raise ConfigError("perf.channels_last applies to image backbones; this one reads token ids")
        net.to(memory_format=torch.channels_last)
    net.channels_last = bool(channels_last)
    net.fuse_heads = bool(fuse_heads)
    if compile:
        if compile is not True and compile not in COMPILE_MODES:
            raise ConfigError(f"perf.compile must be true, false or one of {list(COMPILE_MODES)}, got '{compile}'")
        net.backbone.compile(**({} if compile is True else {"mode": compile}))
