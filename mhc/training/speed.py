"""Speed options of a training run (``perf.*`` in the config; measured in docs/benchmarks.md).

Each leaves the results the same up to floating-point rounding and the checkpoint format
unchanged: parameter names and shapes stay as they are, so a checkpoint trained with any of
them loads anywhere. Mixed precision is Lightning's (``trainer.precision=bf16-mixed``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from mhc.data.datamodule import available_cores
from mhc.errors import ConfigError
from mhc.model.net import MultiHeadNet

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>", or "max <period>"
log = logging.getLogger(__name__)


def cpu_budget() -> int:
    """The CPUs this process may use: those it may run on (:func:`~mhc.data.datamodule.available_cores`),
    capped by a cgroup CPU quota (a container's limit, which torch's default of every physical core ignores)."""
    count = available_cores()
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def use_threads(threads: int | str | None = "auto") -> int:
    """Set torch's intra-op threads; the number set. ``auto``: ``OMP_NUM_THREADS`` when it is set,
    else :func:`cpu_budget` (DDP processes then share them out: Lightning divides by the processes
    on the node). A number is also exported as ``OMP_NUM_THREADS`` so DDP processes keep it. On a
    machine shared with other work, fewer threads than cores is faster (one thread per free core)."""
    if threads is None or threads == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        count = cpu_budget()
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        count = threads
        os.environ["OMP_NUM_THREADS"] = str(count)
    else:
        raise ConfigError(f"perf.threads must be auto or an integer >= 1, got {threads!r}")
    torch.set_num_threads(count)
    log.info(f"torch uses {count} thread{'s' * (count > 1)} (perf.threads={threads}); on a machine shared with "
             "other work, perf.threads=N with N the free cores is faster")
    return count


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
