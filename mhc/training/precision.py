"""The trainer's default precision and accelerator, from the hardware a run finds.

``trainer.precision: ${mhc.precision:${trainer.accelerator},${backbone}}`` resolves here:

* on a GPU (``accelerator`` ``gpu``/``cuda``, or ``auto`` with CUDA present): ``bf16-mixed``
  where the GPU computes in bfloat16 (Ampere and newer), else ``32-true``;
* on a CPU: ``bf16-mixed`` for a convolutional backbone where the CPU computes in bfloat16
  natively (AVX512-BF16, AMX), else ``32-true``. Transformers stay in float32 there: in bf16 the
  sequence transformer learned less in the same epochs (docs/benchmarks.md), so bf16 is a
  choice (``trainer.precision=bf16-mixed``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from mhc.model.backbones.registry import is_convolutional_backbone

GPU_ACCELERATORS = ("gpu", "cuda")


def native_bf16_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast
    about halves a convolutional training step; elsewhere it is emulated and slower."""
    try:
        flags = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def cpu_precision(backbone: str | Mapping[str, Any]) -> str:
    """The CPU default: bf16-mixed for a convolutional backbone on a CPU with bfloat16, else 32-true."""
    return "bf16-mixed" if native_bf16_cpu() and is_convolutional_backbone(backbone) else "32-true"


def gpu_precision() -> str:
    """The GPU default: bf16-mixed where the GPU computes in bfloat16, else 32-true."""
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a CUDA GPU on this machine."""
    accelerator = str(accelerator).lower()
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available())


def default_precision(accelerator: str, backbone: str | Mapping[str, Any]) -> str:
    """``${mhc.precision:${trainer.accelerator},${backbone}}``: see the module docstring; the
    backbone is its options (or, as configs of mhc 0.1 give it, its name)."""
    if uses_gpu(accelerator):
        return gpu_precision()
    if not isinstance(backbone, str):
        from omegaconf import DictConfig, OmegaConf

        backbone = OmegaConf.to_container(backbone, resolve=True) if isinstance(backbone, DictConfig) else dict(backbone)
    return cpu_precision(backbone)
