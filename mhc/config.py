"""The structured schema of the Hydra configs, so mistakes fail before anything runs.

Hydra merges ``conf/train.yaml`` onto :class:`TrainConfig`: an unknown key, a wrong type
(``seed=abc``) or an unknown per-task option is one error line naming the key. Groups that
build objects through ``_target_`` (data, optimizer, trainer, ...) stay open dictionaries;
their constructors check their own arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from mhc.errors import ConfigError


@dataclass
class TaskOptions:
    """Per-task overrides of :class:`mhc.tasks.TaskSpec`; ``None`` keeps what the data provides."""

    kind: Optional[str] = None
    classes: Optional[List[str]] = None
    masked: Optional[bool] = None
    parent: Optional[str] = None
    allowed_by_parent: Optional[Dict[str, List[str]]] = None
    loss: Optional[str] = None
    weight: Optional[float] = None
    lr_scale: Optional[float] = None
    hidden: Optional[List[int]] = None
    dropout: Optional[float] = None
    label_smoothing: Optional[float] = None
    class_weights: Optional[List[float]] = None
    pos_weight: Optional[List[float]] = None
    focal_gamma: Optional[float] = None


@dataclass
class HeadDefaults:
    """Head options applied to every task that does not set its own."""

    hidden: List[int] = field(default_factory=list)
    dropout: float = 0.0


@dataclass
class LossDefaults:
    """The loss of every task of each kind, unless a task sets its own."""

    multiclass: str = "ce"
    binary: str = "bce"
    multilabel: str = "bce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0


@dataclass
class PruningCurveOptions:
    """``mhc-analyze``: the pruning curve (importance order against random orders)."""

    fractions: List[float] = field(default_factory=list)
    random_seeds: int = 3
    rank_by: Optional[str] = None
    recompute_every: int = 1


@dataclass
class DeltaMOptions:
    """The multi-task improvement over a baseline, logged as ``val/delta_m``."""

    baseline: Any = None  # a baseline run's checkpoint, or {task: value}
    metric: str = "acc"


@dataclass
class SpeedOptions:
    """``perf.*``: see :func:`mhc.training.speed.apply_speed_options`."""

    channels_last: Any = "auto"  # true | false | auto (on for convolutional backbones)
    compile: Any = False  # false | true | a torch.compile mode
    fuse_heads: bool = True


@dataclass
class TrainConfig:
    task_name: str = "train"
    seed: int = 0
    data: Any = None
    tasks: Dict[str, TaskOptions] = field(default_factory=dict)
    head: HeadDefaults = field(default_factory=HeadDefaults)
    loss: LossDefaults = field(default_factory=LossDefaults)
    weighting: Dict[str, Any] = field(default_factory=dict)
    backbone_lr_scale: float = 1.0
    delta_m: DeltaMOptions = field(default_factory=DeltaMOptions)
    nonfinite_loss: str = "stop"
    perf: SpeedOptions = field(default_factory=SpeedOptions)
    backbone: Dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    paths: Dict[str, Any] = field(default_factory=dict)
    resume: Optional[str] = None
    test: bool = True
    # mhc-eval / mhc-predict / mhc-analyze / mhc-prune
    ckpt: Optional[str] = None
    split: str = "test"
    output: Optional[str] = None
    importance_split: Optional[str] = None
    max_batches: Optional[int] = None
    samples: Any = 4  # a count, or a list of sample indices
    pattern_threshold: float = 0.5
    prune: PruningCurveOptions = field(default_factory=PruningCurveOptions)
    fraction: float = 0.3
    strategy: str = "importance"
    rank_by: Optional[str] = None
    recompute_every: int = 1
    repeats: int = 20
    objective: Dict[str, Any] = field(default_factory=dict)
    # mhc-export
    format: Any = "safetensors"  # safetensors | onnx | torch_export, or a list of them


def native_bf16_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast
    about halves a convolutional training step; elsewhere it is emulated and slower."""
    try:
        flags = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def cpu_precision(backbone: str) -> str:
    """``${mhc.cpu_precision:${backbone.name}}``, the CPU trainer's default precision: bf16-mixed
    for a convolutional backbone where the hardware has bfloat16, else 32-true. Transformers stay
    in float32: in bf16 the sequence transformer learned less in the same epochs (see
    docs/benchmarks.md), so there bf16 is a choice (``trainer.precision=bf16-mixed``)."""
    from mhc.model.backbones.registry import is_convolutional_backbone

    return "bf16-mixed" if native_bf16_cpu() and is_convolutional_backbone(backbone) else "32-true"


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("mhc.cpu_precision"):
        OmegaConf.register_new_resolver("mhc.cpu_precision", cpu_precision)


def check_top_level(cfg: DictConfig) -> None:
    """Reject top-level keys the schema does not know (Hydra accepts ``+key=value`` regardless)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(cfg.keys()) - known - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; expected some of {sorted(known)}")
