"""Hierarchies read from the rows: a declared parent's allowed classes, and the undeclared
hierarchy named in one line."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

from mhc.data.hierarchy import allowed_from_rows, undeclared_parents
from mhc.data.manifest import ManifestDataModule
from mhc.tasks import TaskSpec

TREE = {"road_vehicle": ["automobile", "truck"], "air_water_vehicle": ["airplane", "ship"], "pet": ["cat", "dog"],
        "ungulate": ["deer", "horse"], "non_mammal": ["bird", "frog"]}
KIND = {group: "vehicle" if "vehicle" in group else "animal" for group in TREE}


def cifar_like_columns(repeats: int = 2) -> dict[str, list[str]]:
    """CIFAR-10's three columns: each label under one group, each group under one kind."""
    rows = [(label, group, KIND[group]) for group, labels in TREE.items() for label in labels] * repeats
    label, group, kind = (list(column) for column in zip(*rows))
    return {"label": label, "group": group, "kind": kind}


def multiclass(name: str, classes) -> TaskSpec:
    return TaskSpec(name, "multiclass", sorted(set(classes)), masked=True)


def cifar_like_tasks(columns) -> list[TaskSpec]:
    return [multiclass(name, [c for c in cells if c]) for name, cells in columns.items()]


def test_a_label_under_a_group_under_a_kind_is_named_at_its_finest_level():
    columns = cifar_like_columns()
    assert undeclared_parents(cifar_like_tasks(columns), columns) == {"label": "group"}  # one level, the finest
    # a group under a kind, once the label is left out
    assert undeclared_parents(cifar_like_tasks({k: columns[k] for k in ("group", "kind")}), columns) == {"group": "kind"}


def test_no_hierarchy_is_named_where_the_rows_do_not_show_one():
    columns = cifar_like_columns()
    columns["group"][0] = "pet"  # one automobile under pet: the label no longer determines the group (but its kind)
    assert undeclared_parents(cifar_like_tasks(columns), columns) == {"label": "kind"}
    columns["kind"][0] = "animal"
    assert undeclared_parents(cifar_like_tasks(columns), columns) == {"group": "kind"}
    once = {k: v for k, v in cifar_like_columns(repeats=1).items() if k != "kind"}  # each label seen once: too few rows to say
    assert undeclared_parents(cifar_like_tasks(once), once) == {}
    declared = cifar_like_columns()
    tasks = [t if t.name != "label" else TaskSpec("label", "multiclass", t.classes, parent="group")
             for t in cifar_like_tasks(declared)]
    assert undeclared_parents(tasks, declared) == {}  # label has its parent; group is one, so stays a parent


def test_a_declared_parent_takes_its_allowed_classes_from_every_split():
    train = cifar_like_columns()
    for i, label in enumerate(train["label"]):
        if label == "ship":
            train["label"][i] = ""  # ship is labelled only in validation
    val = {"label": ["ship", "cat", ""], "group": ["air_water_vehicle", "pet", "pet"], "kind": ["vehicle", "animal", ""]}
    tasks = cifar_like_tasks(cifar_like_columns())
    tasks = [TaskSpec("label", "multiclass", t.classes, masked=True, parent="group") if t.name == "label" else t for t in tasks]
    filled = {t.name: t for t in allowed_from_rows(tasks, [train, val])}
    assert filled["label"].allowed_by_parent == {g: sorted(labels) for g, labels in TREE.items()}
    kept = TaskSpec("label", "multiclass", tasks[0].classes, parent="group", allowed_by_parent={"pet": ["cat"]})
    assert allowed_from_rows([kept, *tasks[1:]], [train])[0].allowed_by_parent == {"pet": ["cat"]}  # declared: kept


def test_a_manifest_declares_the_parent_alone_and_names_an_undeclared_hierarchy_once(tmp_path: Path, caplog):
    columns = cifar_like_columns()
    rows = [f"{label} {i},{label},{kind},{group}"
            for i, (label, kind, group) in enumerate(zip(columns["label"], columns["kind"], columns["group"]))]
    (tmp_path / "train.csv").write_text("text,label,kind,group\n" + "\n".join(rows) + "\n")
    with caplog.at_level(logging.INFO, logger="mhc.data.manifest"):
        data = ManifestDataModule(tmp_path / "train.csv")
        data.task_specs()
        data.task_specs()
    hints = [r.getMessage() for r in caplog.records if "comes with one" in r.getMessage()]
    assert hints == [textwrap.dedent(f"""\
        {tmp_path / 'train.csv'}: every 'label' class comes with one 'group' class in the training rows: \
+data.tasks.label.parent=group decodes label under the predicted group (never outside it), the classes allowed \
under each read from the data""")]
    tasks = {t.name: t for t in ManifestDataModule(tmp_path / "train.csv", tasks={"label": {"parent": "group"}}).task_specs()}
    assert tasks["label"].allowed_by_parent == {g: sorted(labels) for g, labels in TREE.items()}
