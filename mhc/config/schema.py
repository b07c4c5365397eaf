"""The structured schema of the Hydra configs, so mistakes fail before anything runs.

Each command's config (``mhc/conf/<command>.yaml``) is merged onto its own schema
(:data:`SCHEMAS`): an unknown key, an option of another command, a wrong type (``seed=abc``)
or an unknown per-task option is one error naming the key. Groups that build objects through
``_target_`` (data, optimizer, trainer, ...) stay open dictionaries; their constructors check
their own arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, ValidationError

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
    bias_init: str = "default"


@dataclass
class LossDefaults:
    """The loss of every task of each kind, unless a task sets its own."""

    multiclass: str = "ce"
    binary: str = "bce"
    multilabel: str = "bce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: Optional[str] = None
    pos_weight: Optional[str] = None
    balanced_power: float = 1.0
    label_reduction: str = "mean"


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
    metric: str = "f1"


@dataclass
class SpeedOptions:
    """``perf.*``: see :func:`mhc.training.speed.apply_speed_options`."""

    channels_last: Any = "auto"  # true | false | auto (on for convolutional backbones)
    compile: Any = False  # false | true | a torch.compile mode
    fuse_heads: bool = True
    threads: Any = "auto"  # auto | N: torch's intra-op threads (mhc.training.speed.use_threads)


@dataclass
class AuxiliaryOptions:
    """An auxiliary objective trained beside the heads (``auxiliary=masked_modeling``)."""

    weight: float = 0.5


@dataclass
class RunConfig:
    """What every command has: its name (the run folder's parent), the seed and the paths."""

    task_name: str = "run"
    seed: int = 0
    paths: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FitConfig(RunConfig):
    """A command that fits a backbone: the data, the backbone and how it is optimised."""

    data: Any = None
    backbone: Dict[str, Any] = field(default_factory=dict)
    objective: Dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    resume: Optional[str] = None


@dataclass
class TrainConfig(FitConfig):
    """``mhc-train``."""

    task_name: str = "train"
    recipe: Optional[str] = None  # auto: choices made from the data (mhc.api.recipe)
    # {task: TaskOptions}, typed by check_task_options: an open mapping, so that
    # +tasks.<name>.<option>=... can name a task the data defines (a manifest column)
    tasks: Dict[str, Any] = field(default_factory=dict)
    head: HeadDefaults = field(default_factory=HeadDefaults)
    loss: LossDefaults = field(default_factory=LossDefaults)
    weighting: Dict[str, Any] = field(default_factory=dict)
    auxiliary: Dict[str, AuxiliaryOptions] = field(default_factory=dict)
    augment: Dict[str, Any] = field(default_factory=dict)
    backbone_lr_scale: float = 1.0
    backbone_freeze: Any = 0  # 0 | N (depths below N) | all
    delta_m: DeltaMOptions = field(default_factory=DeltaMOptions)
    nonfinite_loss: str = "stop"
    perf: SpeedOptions = field(default_factory=SpeedOptions)
    test: bool = True
    tta: Optional[str] = None
    calibrate: bool = False
    calibration_method: str = "temperature"


@dataclass
class PretrainConfig(FitConfig):
    """``mhc-pretrain``: the backbone is saved to ``output``."""

    task_name: str = "pretrain"
    output: Optional[str] = None


@dataclass
class CheckpointConfig(RunConfig):
    """A command that reads a checkpoint and runs it on configured data."""

    ckpt: Optional[str] = None
    data: Any = None
    trainer: Any = None


@dataclass
class EvalConfig(CheckpointConfig):
    """``mhc-eval``."""

    task_name: str = "eval"
    split: str = "test"
    tta: Optional[str] = None


@dataclass
class CalibrateConfig(CheckpointConfig):
    """``mhc-calibrate``."""

    task_name: str = "calibrate"
    split: str = "val"
    method: str = "temperature"
    threshold: Any = None  # an objective for every binary/multilabel head, or {task: objective}
    min_confidence: Any = None  # a number for every multiclass/binary head, or {task: number}
    output: Optional[str] = None


@dataclass
class PredictConfig(CheckpointConfig):
    """``mhc-predict``."""

    task_name: str = "predict"
    output: Optional[str] = None
    tta: Optional[str] = None


@dataclass
class AnalyzeConfig(CheckpointConfig):
    """``mhc-analyze``."""

    task_name: str = "analyze"
    split: str = "val"
    importance_split: Optional[str] = None
    max_batches: Optional[int] = None
    samples: Any = 4  # a count, or a list of sample indices
    pattern_threshold: float = 0.5
    prune: PruningCurveOptions = field(default_factory=PruningCurveOptions)
    logger: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneConfig(CheckpointConfig):
    """``mhc-prune``."""

    task_name: str = "prune"
    fraction: float = 0.3
    strategy: str = "importance"
    rank_by: Optional[str] = None
    recompute_every: int = 1
    importance_split: Optional[str] = None
    max_batches: Optional[int] = None
    split: str = "val"
    repeats: int = 20
    output: Optional[str] = None


@dataclass
class ExportConfig(RunConfig):
    """``mhc-export``."""

    task_name: str = "export"
    ckpt: Optional[str] = None
    format: Any = "safetensors"  # safetensors | onnx | torch_export, or a list of them
    output: Optional[str] = None


@dataclass
class ShardConfig(RunConfig):
    """``mhc-shard``."""

    task_name: str = "shard"
    data: Any = None
    output: Optional[str] = None
    splits: List[str] = field(default_factory=lambda: ["train", "val", "test"])
    image_format: str = "png"
    quality: int = 95
    chunk_bytes: str = "64MB"
    workers: int = 1
    overwrite: bool = False


# The schema of each command's primary config (mhc/conf/<command>.yaml), stored as <command>_schema.
SCHEMAS: dict[str, type] = {"train": TrainConfig, "pretrain": PretrainConfig, "eval": EvalConfig,
                            "calibrate": CalibrateConfig, "predict": PredictConfig, "analyze": AnalyzeConfig, "prune": PruneConfig,
                            "export": ExportConfig, "shard": ShardConfig}


def register_configs() -> None:
    """Store each command's schema under the name its config's defaults list uses."""
    store = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        store.store(name=f"{command}_schema", node=schema)
    store.store(name="task_options", node=TaskOptions)  # a data set's tasks: each one's options, typed


def check_task_options(cfg: DictConfig) -> None:
    """Each ``tasks.<name>`` is a mapping of :data:`TaskOptions` with values of their types
    (``tasks.shape.weight=abc`` is one error naming the key); unknown options and tasks the data
    does not have are named when the tasks are resolved."""
    for name, options in (cfg.get("tasks") or {}).items():
        if options is None:
            continue
        if not isinstance(options, DictConfig):
            raise ConfigError(f"tasks.{name} must map options to values (tasks.{name}.weight=2), got {options!r}")
        typed = OmegaConf.structured(TaskOptions)
        for key in options:
            if key not in typed:
                continue  # named with the options there are by mhc.tasks.resolve_tasks
            try:
                typed[key] = options[key]
            except ValidationError as err:
                raise ConfigError(f"tasks.{name}.{key}: {str(err).splitlines()[0]}") from None


def check_top_level(cfg: DictConfig, command: str = "train") -> None:
    """Reject top-level keys that ``command``'s schema does not know (Hydra accepts
    ``+key=value`` regardless): an option of another command is one error naming it."""
    known = {f.name for f in fields(SCHEMAS[command])}
    unknown = sorted(set(cfg.keys()) - known - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} for mhc-{command}; expected some of {sorted(known)}")
