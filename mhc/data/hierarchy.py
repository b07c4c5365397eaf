"""Hierarchies read from a manifest's rows.

A child task declared with only its ``parent`` takes ``allowed_by_parent`` from the data: under
each parent class, the child classes seen with it in a row labelled for both
(:func:`allowed_from_rows`). And columns that look like a hierarchy nobody declared, where every
class of one comes with a single class of another (CIFAR-10's ``label`` and its ``group``), are
named in one line with the option that declares them (:func:`undeclared_parents`), so that a
model never predicts ``label=deer`` beside ``group=vehicle``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from typing import Mapping, Sequence

from mhc.tasks import TaskSpec

Columns = Mapping[str, Sequence[str]]  # a manifest's label cells by column, "" where missing

MIN_ROWS = 2  # a child class seen in fewer rows labelled for both says nothing about its parent


def pairs(columns: Sequence[Columns], child: str, parent: str) -> dict[str, dict[str, int]]:
    """Parent class -> child class -> rows with both labels, over the manifests' ``columns``."""
    counts: Counter[tuple[str, str]] = Counter()
    for cells in columns:
        counts.update(pair for pair in zip(cells.get(child, ()), cells.get(parent, ())) if pair[0] and pair[1])
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for (child_class, parent_class), count in counts.items():
        found[parent_class][child_class] = count
    return found


def allowed_from_rows(tasks: Sequence[TaskSpec], columns: Sequence[Columns]) -> list[TaskSpec]:
    """``tasks`` where a child declared with a ``parent`` and no ``allowed_by_parent`` gets the
    child classes seen under each parent class in ``columns`` (the training, validation and test
    rows: a child class the data pairs with a parent class is never masked out under it). A
    parent class seen with no child label allows every child class."""
    by_name = {task.name: task for task in tasks}
    filled = []
    for task in tasks:
        parent = by_name.get(task.parent or "")
        if parent is not None and not task.allowed_by_parent:
            seen = pairs(columns, task.name, parent.name)
            allowed = {p: [c for c in task.classes if c in seen[p]] for p in parent.classes if p in seen}
            task = replace(task, allowed_by_parent={p: classes for p, classes in allowed.items() if classes})
        filled.append(task)
    return filled


def undeclared_parents(tasks: Sequence[TaskSpec], columns: Columns) -> dict[str, str]:
    """Child -> parent for multiclass tasks with no parent declared where, in the training rows,
    every child class (seen at least :data:`MIN_ROWS` times with a parent label) comes with a
    single class of a task of fewer classes; a child's nearest such parent (the one of most
    classes). One level, as mhc decodes: a task that would be both parent and child is left a
    parent."""
    multiclass = [t for t in tasks if t.kind == "multiclass"]
    found: dict[str, str] = {}
    for child in multiclass:
        if child.parent is not None or any(t.parent == child.name for t in tasks):
            continue
        parents = [p for p in multiclass if p.num_classes < child.num_classes and p.parent is None
                   and determines(pairs([columns], child.name, p.name))]
        if parents:
            found[child.name] = max(parents, key=lambda p: p.num_classes).name
    return {child: parent for child, parent in found.items() if child not in found.values()}


def determines(seen: Mapping[str, Mapping[str, int]]) -> bool:
    """Whether every child class comes with one parent class, seen :data:`MIN_ROWS` times, and the
    children fall under two parent classes or more (one parent class says nothing)."""
    parent_of: dict[str, set[str]] = defaultdict(set)
    rows: dict[str, int] = defaultdict(int)
    for parent_class, children in seen.items():
        for child_class, count in children.items():
            parent_of[child_class].add(parent_class)
            rows[child_class] += count
    return (len(seen) >= 2 and all(len(p) == 1 for p in parent_of.values())
            and all(count >= MIN_ROWS for count in rows.values()))


def hint(child: str, parent: str) -> str:
    """The line that names an undeclared hierarchy and the option declaring it."""
    return (f"every '{child}' class comes with one '{parent}' class in the training rows: "
            f"+data.tasks.{child}.parent={parent} decodes {child} under the predicted {parent} "
            f"(never outside it), the classes allowed under each read from the data")
