"""The structured schema of the Hydra configs, so mistakes fail before anything runs.

Hydra merges ``mhc/conf/train.yaml`` onto :class:`TrainConfig`: an unknown key, a wrong type
(``seed=abc``) or an unknown per-task option is one error line naming the key. Groups that
build objects through ``_target_`` (data, optimizer, trainer, ...) stay open dictionaries;
their constructors check their own arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from mhc.errors import ConfigError
from mhc.tasks import TASK_OPTIONS

# Per-task overrides of mhc.tasks.TaskSpec (``tasks.<name>.<option>``), made from the options
# TaskSpec declares; ``None`` keeps what the data provides.
TaskOptions = make_dataclass(
    "TaskOptions", [(name, Optional[option.config_type], field(default=None)) for name, option in TASK_OPTIONS.items()]
)


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


def register_configs() -> None:
    """Store the schema under the name the configs' defaults lists use (``train_schema``)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def check_top_level(cfg: DictConfig) -> None:
    """Reject top-level keys the schema does not know (Hydra accepts ``+key=value`` regardless)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(cfg.keys()) - known - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; expected some of {sorted(known)}")
