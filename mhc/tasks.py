"""What a task is: its kind, classes, head, loss, weight, and label/output masks.

A :class:`TaskSpec` is plain data (JSON-serialisable through :meth:`TaskSpec.to_dict`), so it
travels inside checkpoints and exports without pickling code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping

from torch import nn

from mhc.errors import ConfigError

TaskKind = Literal["multiclass", "binary", "multilabel"]
TASK_KINDS: tuple[str, ...] = ("multiclass", "binary", "multilabel")
LOSSES_BY_KIND: dict[str, tuple[str, ...]] = {
    "multiclass": ("ce", "focal"),
    "binary": ("bce", "focal"),
    "multilabel": ("bce", "focal"),
}
DEFAULT_LOSS: dict[str, str] = {"multiclass": "ce", "binary": "bce", "multilabel": "bce"}
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# Task names key torch ModuleDicts, whose keys may not shadow module attributes.
RESERVED_NAMES = frozenset(name for name in dir(nn.ModuleDict) if not name.startswith("_"))


@dataclass(frozen=True)
class TaskOption:
    """How a task option is given in configs and manifests: its type in the config schema, and
    how a value is normalised (``None``: as it is), with what is expected when it cannot be (a
    wrong type is one :class:`ConfigError`, not a failure deep in training)."""

    config_type: Any
    cast: Callable[[Any], Any] | None = None
    expected: str = ""


def _option(config_type: Any, cast: Callable[[Any], Any] | None = None, expected: str = "") -> dict[str, TaskOption]:
    return {"option": TaskOption(config_type, cast, expected)}


def _listed(value: Any) -> list:
    """A list or tuple as a list; a string or mapping is not a list of values."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"not a list: {value!r}")
    return list(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"not a boolean: {value!r}")
    return value


def _class_map(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise TypeError(f"not a mapping: {value!r}")
    return {str(key): [str(c) for c in _listed(names)] for key, names in value.items()}


FLIP_RULES = ("invariant", "mask", "skip")
LABEL_REDUCTIONS = ("mean", "sum")
BIAS_INITS = ("default", "prior")


def _flip_rule(value: Any) -> str | dict[str, str]:
    if isinstance(value, str) and value in FLIP_RULES:
        return value
    if isinstance(value, Mapping):
        return {str(key): str(other) for key, other in value.items()}
    raise TypeError(f"not a flip rule: {value!r}")


def _numbers(value: Any) -> list[float] | None:
    return None if value is None else [float(w) for w in _listed(value)]


BALANCED = "balanced"  # class or positive weights computed from the training counts (mhc.data.balance)


def _weights(value: Any) -> list[float] | str | None:
    """Per-class weights, or ``balanced`` (computed from the training counts when training starts)."""
    return value if value == BALANCED else _numbers(value)


@dataclass
class TaskSpec:
    """One classification task and the head that predicts it.

    Attributes:
        name: task name, used in batch keys, metric names and outputs.
        kind: ``multiclass`` (one of C), ``binary`` (yes/no, one logit) or ``multilabel``
            (any subset of C, one logit per class).
        classes: class names; for ``binary`` the negative and the positive name.
        masked: a masked head accepts samples without this task's label (label mask):
            they are left out of its loss and metrics. An unmasked head rejects them.
        parent: name of a multiclass task whose label restricts this task's classes
            (output mask), through ``allowed_by_parent``.
        allowed_by_parent: parent class -> classes of this task allowed under it.
        loss: ``ce`` or ``focal`` for multiclass; ``bce`` or ``focal`` for binary/multilabel.
        weight: static weight of this task's loss in the total.
        lr_scale: the head's learning rate as a multiple of the optimizer's.
        hidden: widths of the head's hidden layers (empty: a linear head).
        dropout: dropout before each linear layer of the head.
        label_smoothing: cross-entropy label smoothing (multiclass ``ce``).
        class_weights: per-class loss weights (multiclass), in ``classes`` order, or ``balanced``
            (from the training counts, :mod:`mhc.data.balance`).
        pos_weight: positive-class weight per output (binary/multilabel ``bce``), or ``balanced``.
        focal_gamma: focusing parameter of the focal loss (Lin et al. 2017).
        temperature: the fitted temperature(s) that divide the logits before the softmax or
            sigmoid (:mod:`mhc.calibration`): one for a multiclass or binary head, one per class
            for a multilabel head; ``None``: uncalibrated.
        calibration_bias: Platt scaling's intercept per output of a binary or multilabel head,
            added after the division by the temperature (``sigmoid(z / T + b)``); ``None``: none.
        threshold: how a binary or multilabel head's thresholds are chosen on validation:
            ``f1``, ``precision@P``, ``recall@R`` or ``fixed:T`` (default ``fixed:0.5``).
        thresholds: the fitted threshold per output (a class is predicted at or above it);
            ``None``: 0.5, or the ``fixed`` value.
        min_confidence: a multiclass or binary head makes no decision (its label is ``None``) for
            a sample whose top probability is under this; 0: it always decides.
        label_reduction: how a multilabel sample's loss combines its labels: ``mean`` or ``sum``
            (each label then weighs as one binary task, so many rare labels still learn).
        bias_init: ``default`` (PyTorch's) or ``prior``: the head's output biases start at the
            log prior (multiclass) or log prior odds (binary, multilabel) of the labelled training
            samples, so training starts from the base rates (Lin et al. 2017; set when training starts).
        hflip: how a horizontal flip (training augmentation) changes this task's label:
            ``invariant`` (it does not), a class map ``{left: right}`` (completed both ways, as a
            flip undoes itself), ``mask`` (the flipped sample's label is left out) or ``skip``
            (a sample labelled for this task is never flipped).
    """

    name: str
    kind: TaskKind = field(metadata=_option(str, str, "one of multiclass, binary, multilabel"))
    classes: list[str] = field(metadata=_option(List[str], lambda v: [str(c) for c in _listed(v)], "a list of class names"))
    masked: bool = field(default=False, metadata=_option(bool, _boolean, "true or false"))
    parent: str | None = field(default=None, metadata=_option(str))
    allowed_by_parent: dict[str, list[str]] = field(
        default_factory=dict, metadata=_option(Dict[str, List[str]], _class_map, "a mapping {parent class: [classes]}"))
    loss: str | None = field(default=None, metadata=_option(str))
    weight: float = field(default=1.0, metadata=_option(float, float, "a number"))
    lr_scale: float = field(default=1.0, metadata=_option(float, float, "a number"))
    hidden: list[int] = field(default_factory=list, metadata=_option(List[int], lambda v: [int(h) for h in _listed(v)],
                                                                      "a list of integers"))
    dropout: float = field(default=0.0, metadata=_option(float, float, "a number"))
    label_smoothing: float = field(default=0.0, metadata=_option(float, float, "a number"))
    class_weights: list[float] | str | None = field(
        default=None, metadata=_option(Any, _weights, "a list of numbers or balanced"))
    pos_weight: list[float] | str | None = field(default=None, metadata=_option(Any, _weights, "a list of numbers or balanced"))
    focal_gamma: float = field(default=2.0, metadata=_option(float, float, "a number"))
    temperature: list[float] | None = field(default=None, metadata=_option(Any, _numbers, "a list of numbers"))
    calibration_bias: list[float] | None = field(default=None, metadata=_option(Any, _numbers, "a list of numbers"))
    threshold: str = field(default="fixed:0.5", metadata=_option(str, str, "f1, precision@P, recall@R or fixed:T"))
    thresholds: list[float] | None = field(default=None, metadata=_option(Any, _numbers, "a list of numbers"))
    min_confidence: float = field(default=0.0, metadata=_option(float, float, "a number"))
    label_reduction: str = field(default="mean", metadata=_option(str, str, "mean or sum"))
    bias_init: str = field(default="default", metadata=_option(str, str, "default or prior"))
    hflip: str | dict[str, str] = field(
        default="invariant", metadata=_option(Any, _flip_rule, "invariant, mask, skip or a class map {class: class}"))

    def __post_init__(self) -> None:
        for option, declared in TASK_OPTIONS.items():
            if declared.cast is None:
                continue
            cast, expected = declared.cast, declared.expected
            value = getattr(self, option)
            try:
                setattr(self, option, cast(value))
            except (TypeError, ValueError):
                raise ConfigError(f"task '{self.name}': {option} must be {expected}, got {value!r}") from None
        if self.loss is None:
            self.loss = DEFAULT_LOSS.get(self.kind)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: one logit for binary, one per class otherwise."""
        return 1 if self.kind == "binary" else len(self.classes)

    def validate(self) -> None:
        where = f"task '{self.name}'"
        if not valid_task_name(self.name):
            raise ConfigError(
                f"{where}: a task name must be letters, digits, '_' or '-', and not the name of a "
                f"torch.nn.ModuleDict attribute such as 'train', 'type' or 'keys'"
            )
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"{where}: kind must be one of {list(TASK_KINDS)}, got '{self.kind}'")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{where}: class names must be unique, got {self.classes}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ConfigError(f"{where}: a binary task has exactly 2 classes (negative, positive), got {self.classes}")
        if self.kind != "binary" and len(self.classes) < 2:
            raise ConfigError(f"{where}: a {self.kind} task needs at least 2 classes, got {self.classes}")
        if self.loss not in LOSSES_BY_KIND[self.kind]:
            raise ConfigError(
                f"{where}: loss '{self.loss}' does not fit a {self.kind} task; expected one of {list(LOSSES_BY_KIND[self.kind])}"
            )
        if self.weight < 0:
            raise ConfigError(f"{where}: weight must be >= 0, got {self.weight}")
        if self.lr_scale < 0:
            raise ConfigError(f"{where}: lr_scale must be >= 0, got {self.lr_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}: dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.class_weights is not None and self.kind != "multiclass":
            raise ConfigError(f"{where}: class_weights apply to multiclass tasks; use pos_weight for a {self.kind} task")
        if self.pos_weight is not None and self.kind == "multiclass":
            raise ConfigError(f"{where}: pos_weight applies to binary and multilabel tasks; use class_weights")
        if self.focal_gamma < 0:
            raise ConfigError(f"{where}: focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.temperature is not None:
            width = self.num_classes if self.kind == "multilabel" else 1
            if len(self.temperature) != width or any(not t > 0 for t in self.temperature):
                raise ConfigError(f"{where}: temperature must be {width} positive number(s), got {self.temperature}")
        if self.calibration_bias is not None:
            if self.kind == "multiclass":
                raise ConfigError(f"{where}: calibration_bias (Platt scaling) applies to binary and multilabel tasks; "
                                  "a multiclass head is calibrated by its temperature")
            if len(self.calibration_bias) != self.num_outputs:
                raise ConfigError(f"{where}: calibration_bias must be {self.num_outputs} number(s), got {self.calibration_bias}")
        threshold_objective(self.threshold, where)
        if self.min_confidence:
            if self.kind == "multilabel":
                raise ConfigError(f"{where}: min_confidence applies to multiclass and binary tasks; a multilabel head "
                                  "decides each class at its threshold")
            if not 0.0 <= self.min_confidence <= 1.0:
                raise ConfigError(f"{where}: min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.thresholds is not None:
            if self.kind == "multiclass":
                raise ConfigError(f"{where}: thresholds apply to binary and multilabel tasks; a multiclass head "
                                  "predicts its most probable class")
            if len(self.thresholds) != self.num_outputs or any(not 0.0 <= t <= 1.0 for t in self.thresholds):
                raise ConfigError(f"{where}: thresholds must be {self.num_outputs} number(s) in [0, 1], got {self.thresholds}")
        if self.label_reduction not in LABEL_REDUCTIONS:
            raise ConfigError(f"{where}: label_reduction must be one of {', '.join(LABEL_REDUCTIONS)}, got '{self.label_reduction}'")
        if self.bias_init not in BIAS_INITS:
            raise ConfigError(f"{where}: bias_init must be one of {', '.join(BIAS_INITS)}, got '{self.bias_init}'")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"{where}: hidden layer widths must be positive, got {self.hidden}")
        for option in ("class_weights", "pos_weight"):
            value = getattr(self, option)
            weights = value if isinstance(value, list) else [value] if isinstance(value, (int, float)) else []
            if any(not (isinstance(w, (int, float)) and w >= 0) for w in weights):
                raise ConfigError(f"{where}: {option} must be numbers >= 0, got {value}")
        if isinstance(self.class_weights, list) and len(self.class_weights) != self.num_classes:
            raise ConfigError(
                f"{where}: class_weights has {len(self.class_weights)} values, expected one per class ({self.num_classes})"
            )
        if isinstance(self.pos_weight, list) and len(self.pos_weight) != self.num_outputs:
            raise ConfigError(f"{where}: pos_weight has {len(self.pos_weight)} values, expected {self.num_outputs}")
        for parent_class, allowed in self.allowed_by_parent.items():
            unknown = [c for c in allowed if c not in self.classes]
            if unknown:
                raise ConfigError(f"{where}: allowed_by_parent['{parent_class}'] names unknown classes {unknown}")
        if self.allowed_by_parent and self.parent is None:
            raise ConfigError(f"{where}: allowed_by_parent is set but parent is not")
        if isinstance(self.hflip, dict):
            self.hflip = self.flip_map(where)

    def flip_map(self, where: str) -> dict[str, str]:
        """``hflip`` as a complete involution over the classes it names (a -> b implies b -> a)."""
        unknown = sorted({c for pair in self.hflip.items() for c in pair} - set(self.classes))
        if unknown:
            raise ConfigError(f"{where}: hflip names unknown classes {unknown}; the classes are {self.classes}")
        complete = dict(self.hflip)
        for name, other in self.hflip.items():
            if complete.setdefault(other, name) != name:
                raise ConfigError(f"{where}: hflip maps '{name}' to '{other}' but '{other}' to '{complete[other]}'; "
                                  f"a flip undoes itself, so '{other}' must map back to '{name}'")
        return {name: complete[name] for name in self.classes if name in complete and complete[name] != name}

    def flipped_indices(self) -> list[int]:
        """Class index -> its index after a horizontal flip (identity for an invariant task)."""
        mapping = self.hflip if isinstance(self.hflip, dict) else {}
        return [self.classes.index(mapping.get(name, name)) for name in self.classes]

    def decision_thresholds(self) -> list[float]:
        """Each output's threshold: the fitted ones, else the ``fixed`` objective's value, else 0.5."""
        if self.thresholds is not None:
            return list(self.thresholds)
        kind, value = threshold_objective(self.threshold)
        return [value if kind == "fixed" else 0.5] * self.num_outputs

    def class_index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"task '{data.get('name', '?')}': unknown option(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))


def threshold_objective(objective: str, where: str = "threshold") -> tuple[str, float]:
    """``f1``, ``precision@P``, ``recall@R`` or ``fixed:T`` as (kind, value); anything else is a
    :class:`ConfigError` naming ``where``."""
    text = str(objective).strip()
    if text == "f1":
        return "f1", 0.0
    for kind, separator in (("precision", "@"), ("recall", "@"), ("fixed", ":")):
        if text.startswith(kind + separator):
            try:
                value = float(text[len(kind) + 1:])
            except ValueError:
                break
            if 0.0 <= value <= 1.0:
                return kind, value
            break
    raise ConfigError(f"{where}: the threshold objective must be f1, precision@P, recall@R or fixed:T with P, R, T "
                      f"in [0, 1], got {objective!r}")


def valid_task_name(name: Any) -> bool:
    """Letters, digits, ``_`` or ``-``, and no ``torch.nn.ModuleDict`` attribute (heads are keyed by task)."""
    return isinstance(name, str) and TASK_NAME.fullmatch(name) is not None and name not in RESERVED_NAMES


# Every option of a task, declared once on TaskSpec's fields: its config type and normaliser.
TASK_OPTIONS: dict[str, TaskOption] = {f.name: f.metadata["option"] for f in fields(TaskSpec) if "option" in f.metadata}
TASK_OPTION_NAMES: frozenset[str] = frozenset(TASK_OPTIONS)


def resolve_tasks(
    inferred: Iterable[TaskSpec], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[TaskSpec]:
    """Merge the tasks a data set provides with the user's per-task options.

    ``overrides`` maps task name -> options (``loss``, ``weight``, ``hidden``, ...); a name the
    data does not provide is an error (declare manifest columns with ``data.tasks``).
    """
    tasks = {t.name: t for t in inferred}
    for name, options in (overrides or {}).items():
        options = {k: v for k, v in dict(options).items() if v is not None}
        unknown = sorted(set(options) - TASK_OPTION_NAMES)
        if unknown:
            raise ConfigError(f"tasks.{name}: unknown option(s) {unknown}; expected some of {sorted(TASK_OPTION_NAMES)}")
        if name in tasks:
            merged = {**tasks[name].to_dict(), **options}
            if "kind" in options and options["kind"] != tasks[name].kind and "loss" not in options:
                merged["loss"] = None
            tasks[name] = TaskSpec.from_dict(merged)
        elif options:
            raise ConfigError(f"tasks.{name}: unknown task; the data provides {sorted(tasks)}")
    check_task_graph(tasks.values())
    return list(tasks.values())


def check_task_graph(tasks: Iterable[TaskSpec]) -> None:
    """Every parent exists, is multiclass, and its classes cover ``allowed_by_parent``."""
    by_name = {t.name: t for t in tasks}
    for task in by_name.values():
        if task.parent is None:
            continue
        if task.kind != "multiclass":
            raise ConfigError(f"task '{task.name}': only multiclass tasks can have a parent (output mask); it is {task.kind}")
        parent = by_name.get(task.parent)
        if parent is None:
            raise ConfigError(f"task '{task.name}': parent task '{task.parent}' does not exist; tasks are {sorted(by_name)}")
        if parent.kind != "multiclass":
            raise ConfigError(f"task '{task.name}': parent '{parent.name}' must be multiclass, it is {parent.kind}")
        if parent.parent is not None:
            raise ConfigError(f"task '{task.name}': parent '{parent.name}' has a parent itself; one level is supported")
        unknown = [c for c in task.allowed_by_parent if c not in parent.classes]
        if unknown:
            raise ConfigError(f"task '{task.name}': allowed_by_parent names classes {unknown} that '{parent.name}' does not have")


def tasks_to_dicts(tasks: Iterable[TaskSpec]) -> list[dict[str, Any]]:
    return [t.to_dict() for t in tasks]


def tasks_from_dicts(data: Iterable[Mapping[str, Any]]) -> list[TaskSpec]:
    tasks = [TaskSpec.from_dict(d) for d in data]
    check_task_graph(tasks)
    return tasks
