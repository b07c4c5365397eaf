import pytest

from mhc.errors import ConfigError
from mhc.tasks import TaskSpec, resolve_tasks, tasks_from_dicts, tasks_to_dicts


def test_defaults_and_outputs():
    assert TaskSpec("t", "multiclass", ["a", "b", "c"]).loss == "ce"
    binary = TaskSpec("t", "binary", ["no", "yes"])
    assert binary.loss == "bce" and binary.num_outputs == 1
    assert TaskSpec("t", "multilabel", ["a", "b", "c"]).num_outputs == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "regression", "classes": ["a", "b"]}, "kind must be one of"),
        ({"kind": "binary", "classes": ["a", "b", "c"]}, "exactly 2 classes"),
        ({"kind": "multiclass", "classes": ["a", "b"], "loss": "bce"}, "loss 'bce' does not fit a multiclass task"),
        ({"kind": "multiclass", "classes": ["a", "a"]}, "unique"),
        ({"kind": "multiclass", "classes": ["a", "b"], "class_weights": [1.0]}, "one per class"),
    ],
)
def test_invalid_spec_names_task(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        TaskSpec(name="shape", **kwargs)
    assert "task 'shape'" in str(err.value)


def test_resolve_overrides_and_unknown_task(tasks):
    resolved = resolve_tasks(tasks, {"coarse": {"loss": "focal", "weight": 2.0}})
    assert resolved[0].loss == "focal" and resolved[0].weight == 2.0
    with pytest.raises(ConfigError, match=r"tasks.colour: unknown task; the data provides \['coarse'"):
        resolve_tasks(tasks, {"colour": {"loss": "focal"}})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['lossx'\]"):
        resolve_tasks(tasks, {"coarse": {"lossx": "focal"}})


def test_parent_must_exist_and_be_multiclass(tasks):
    child = TaskSpec("child", "multiclass", ["p", "q"], parent="missing")
    with pytest.raises(ConfigError, match="parent task 'missing' does not exist"):
        resolve_tasks([*tasks, child])
    child = TaskSpec("child", "multiclass", ["p", "q"], parent="flag")
    with pytest.raises(ConfigError, match="must be multiclass"):
        resolve_tasks([*tasks, child])


def test_round_trip_plain_data(tasks):
    assert tasks_from_dicts(tasks_to_dicts(tasks)) == tasks


@pytest.mark.parametrize("name", ["type", "a.b", "", "train", "x y"])
def test_task_names_that_cannot_key_modules_are_rejected(name):
    with pytest.raises(ConfigError, match="a task name must be"):
        TaskSpec(name, "multiclass", ["a", "b"])


def test_only_multiclass_children(tasks):
    child = TaskSpec("child", "multilabel", ["p", "q"], parent="coarse")
    with pytest.raises(ConfigError, match="only multiclass tasks can have a parent"):
        resolve_tasks([*tasks, child])


def test_schema_options_match_task_fields():
    from dataclasses import fields

    from mhc.config import TaskOptions
    from mhc.tasks import TASK_OPTION_NAMES

    assert {f.name for f in fields(TaskOptions)} == TASK_OPTION_NAMES


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "binary", "classes": ["no", "yes"], "class_weights": [1.0, 2.0]}, "class_weights apply to multiclass"),
        ({"kind": "multiclass", "classes": ["a", "b"], "pos_weight": [2.0, 1.0]}, "pos_weight applies to binary"),
        ({"kind": "multiclass", "classes": ["a", "b"], "focal_gamma": -1.0}, "focal_gamma must be >= 0"),
        ({"kind": "multiclass", "classes": ["a", "b"], "hidden": [0]}, "widths must be positive"),
    ],
)
def test_options_that_do_not_apply_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskSpec(name="t", **kwargs)
