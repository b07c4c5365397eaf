"""CIFAR-100 and CelebA data modules, read from a local root in torchvision's on-disk layout.

Nothing is downloaded. torchvision's own dataset classes are not used for reading: they
verify md5 sums of the full release files (and CelebA needs identity/bbox/landmark files
too), and CIFAR100 drops the coarse labels. Only torchvision's folder and file names are
reused.

CIFAR-100 files are pickles, so they are read with :class:`CifarUnpickler`, which resolves
only the globals a numpy array needs and refuses everything else before it can run.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100, CelebA

from mhc.data.datamodule import TaskDataModule, check_image_size
from mhc.data.labels import ArrayDataset, validate_labels
from mhc.errors import ConfigError, DataError
from mhc.masks import hierarchy_matrix
from mhc.processing.processors import ImageProcessor
from mhc.tasks import TaskSpec

try:  # numpy >= 2 (and 1.26's forward-compatibility shim)
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - older numpy
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

CIFAR100_MEAN = [0.5071, 0.4865, 0.4409]
CIFAR100_STD = [0.2673, 0.2564, 0.2762]
CELEBA_MEAN = [0.5063, 0.4258, 0.3832]
CELEBA_STD = [0.3106, 0.2904, 0.2897]
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip
CELEBA_CLASSES = ["no", "yes"]
CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}


def require_file(path: Path, dataset: str, holder: str) -> Path:
    """``path`` itself, or one DataError saying what is missing and where the data should be."""
    if not path.exists():
        raise DataError(
            f"{dataset} not found: '{path}' is missing; download it yourself and point data.root "
            f"at the folder that holds {holder}/"
        )
    return path


def parent_allowed(tasks: Sequence[TaskSpec], labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample allowed classes bool [N, C] of every task with a parent, from the parent's labels."""
    by_name = {t.name: t for t in tasks}
    allowed: dict[str, np.ndarray] = {}
    for task in tasks:
        parent = by_name.get(task.parent or "")
        if parent is not None and parent.name in labels:
            matrix = hierarchy_matrix(task, parent).numpy()
            allowed[task.name] = matrix[labels[parent.name].clip(min=0)]
    return allowed


class SplitDataModule(TaskDataModule):
    """A data module over a local ``root``; ``predict`` serves the test split."""

    def __init__(self, root: str, **loader: Any) -> None:
        super().__init__(**loader)
        self.root = Path(root).expanduser()

    def build_split(self, split: str) -> Dataset:
        if split == "predict":  # shares the test dataset
            if "test" not in self.splits:
                self.splits["test"] = self.build_source_split("test")
            return self.splits["test"]
        return self.build_source_split(split)

    def build_source_split(self, split: str) -> Dataset:
        """The dataset of ``train``, ``val`` or ``test``."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------- CIFAR-100


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-100 pickle may name: numpy array reconstruction and bytes."""
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }


CIFAR_GLOBALS = _allowed_globals()


class CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR files: any global outside :data:`CIFAR_GLOBALS` is a DataError.

    ``find_class`` is the only way a pickle reaches code, so refusing there means a hostile
    file is rejected before anything it names is imported or called.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the real files are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"'{self.path}': refusing to load global '{module}.{name}'; a CIFAR-100 file holds only "
                f"numpy arrays, lists and strings"
            ) from None


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """The dict stored in a CIFAR-100 file, read safely; keys are decoded to str."""
    try:
        with open(path, "rb") as f:
            obj = CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError...
        raise DataError(f"'{path}': not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"'{path}': expected a dict in CIFAR-100 format, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _field(content: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise DataError(f"'{path}': not in CIFAR-100 format, no '{key}' entry (it has {sorted(content)})")
    return content[key]


@dataclass
class CifarFile:
    """One CIFAR-100 data file: images uint8 [N, 32, 32, 3], coarse/fine labels [N], file names."""

    path: Path
    images: np.ndarray
    labels: dict[str, np.ndarray]
    names: list[str]


def read_cifar_meta(path: Path) -> dict[str, list[str]]:
    """Class names per task from the ``meta`` file: {"coarse": [...], "fine": [...]}."""
    content = load_cifar_pickle(path)
    return {task: [_text(n) for n in _field(content, f"{task}_label_names", path)] for task in ("coarse", "fine")}


def read_cifar_file(path: Path, classes: Mapping[str, Sequence[str]]) -> CifarFile:
    """Images and labels of a ``train`` or ``test`` file; labels are checked against ``classes``."""
    content = load_cifar_pickle(path)
    data = _field(content, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DataError(f"'{path}': 'data' must be a uint8 array [N, 3072], got {type(data).__name__} {shape}")
    n = len(data)
    names = [_text(f) for f in _field(content, "filenames", path)]
    if len(names) != n:
        raise DataError(f"'{path}': {len(names)} filenames for {n} images")
    labels = {task: _cifar_labels(content, task, path, n, len(classes[task]), names) for task in ("coarse", "fine")}
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return CifarFile(path, images, labels, names)


def _cifar_labels(
    content: Mapping[str, Any], task: str, path: Path, n: int, num_classes: int, names: list[str]
) -> np.ndarray:
    """One task's labels as int64 [N], each a class index in [0, num_classes)."""
    try:
        values = np.asarray(_field(content, f"{task}_labels", path), dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"'{path}': '{task}_labels' must be a list of integers") from None
    if values.shape != (n,):
        raise DataError(f"'{path}': '{task}_labels' has shape {list(values.shape)}, expected [{n}] (one per image)")
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"'{path}': image {i} ('{names[i]}') has {task} label {values[i]}; "
            f"expected a class index in [0, {num_classes})"
        )
    return values


def fine_by_coarse(train: CifarFile, classes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Coarse class name -> the fine class names seen under it in ``train``, in fine-class order."""
    pairs = np.unique(np.stack([train.labels["coarse"], train.labels["fine"]], axis=1), axis=0)
    allowed: dict[str, list[str]] = {}
    for coarse, fine in pairs.tolist():
        allowed.setdefault(classes["coarse"][coarse], []).append(classes["fine"][fine])
    return allowed


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: a deterministic ``fraction`` of ``n`` held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"cannot hold out a validation split from {n} training image(s)")
    n_val = min(max(int(round(n * fraction)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class Cifar100DataModule(SplitDataModule):
    """CIFAR-100 from ``root/cifar-100-python/{train,test,meta}`` (the python release).

    Tasks: ``coarse`` (20 superclasses) and ``fine`` (100 classes, under ``coarse``: each
    coarse class allows the fine classes seen with it in the train file). Validation is a
    seeded ``val_fraction`` hold-out of train; test is the test file.
    """

    def __init__(self, root: str, val_fraction: float = 0.1, seed: int = 0, **loader: Any) -> None:
        super().__init__(root, **loader)
        self.val_fraction = val_fraction
        self.seed = seed
        self._classes: dict[str, list[str]] | None = None
        self._files: dict[str, CifarFile] = {}

    def path(self, name: str) -> Path:
        """A CIFAR-100 file under the root; a DataError when it is missing."""
        return require_file(self.root / CIFAR100.base_folder / name, "CIFAR-100", CIFAR100.base_folder)

    def classes(self) -> dict[str, list[str]]:
        """Class names per task, read from ``meta`` once."""
        if self._classes is None:
            self._classes = read_cifar_meta(self.path(CIFAR100.meta["filename"]))
        return self._classes

    def file(self, split: str) -> CifarFile:
        """The ``train`` or ``test`` file, read once."""
        if split not in self._files:
            name = (CIFAR100.train_list if split == "train" else CIFAR100.test_list)[0][0]
            self._files[split] = read_cifar_file(self.path(name), self.classes())
        return self._files[split]

    def task_specs(self) -> list[TaskSpec]:
        classes = self.classes()
        return [
            TaskSpec("coarse", "multiclass", classes["coarse"]),
            TaskSpec("fine", "multiclass", classes["fine"], parent="coarse",
                     allowed_by_parent=fine_by_coarse(self.file("train"), classes)),
        ]  # fmt: skip

    def processor(self) -> ImageProcessor:
        return ImageProcessor(size=[32, 32], mean=list(CIFAR100_MEAN), std=list(CIFAR100_STD))

    def prepare_data(self) -> None:
        """Fail early (one DataError) when a file is missing; nothing is downloaded."""
        for name in (CIFAR100.meta["filename"], CIFAR100.train_list[0][0], CIFAR100.test_list[0][0]):
            self.path(name)

    def build_source_split(self, split: str) -> Dataset:
        source = self.file("test" if split == "test" else "train")
        rows = np.arange(len(source.images))
        if split != "test":
            train_rows, val_rows = holdout_indices(len(rows), self.val_fraction, self.seed)
            rows = train_rows if split == "train" else val_rows
        labels = {task: values[rows] for task, values in source.labels.items()}
        names = [f"image {i} ('{source.names[i]}')" for i in rows]
        return checked_dataset(source.images[rows], labels, self.active_tasks(), f"'{source.path}'", names)


def checked_dataset(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Mapping[str, np.ndarray],
    tasks: Sequence[TaskSpec],
    source: str,
    names: Sequence[str],
) -> ArrayDataset:
    """An ArrayDataset after checking labels, with sample names, against tasks and parents."""
    validate_labels(tasks, labels, source, sample_names=names, allowed=parent_allowed(tasks, labels))
    return ArrayDataset(images, labels, tasks, source=source)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- CelebA


@dataclass
class AttributeTable:
    """``list_attr_celeba.txt``: attribute names, image file names, labels 0/1 [N, A], file lines [N]."""

    path: Path
    attributes: list[str]
    files: list[str]
    values: np.ndarray
    lines: np.ndarray


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}': cannot be read as text ({exc})") from None


def read_attributes(path: Path) -> AttributeTable:
    """Parse the attribute file: line 1 the count, line 2 the names, then ``file v1 ... vA`` (-1/1)."""
    lines = _text_lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit() or not lines[1].split():
        raise DataError(f"'{path}': expected the image count on line 1 and the attribute names on line 2")
    attributes = lines[1].split()
    files: list[str] = []
    rows: list[list[int]] = []
    numbers: list[int] = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(attributes) + 1:
            raise DataError(
                f"'{path}' line {number}: expected a file name and {len(attributes)} attribute values, "
                f"got {len(parts)} columns"
            )
        try:
            rows.append([int(v) for v in parts[1:]])
        except ValueError:
            raise DataError(f"'{path}' line {number}: attribute values must be -1 or 1, got '{line.strip()}'") from None
        files.append(parts[0])
        numbers.append(number)
    values = np.array(rows, dtype=np.int64).reshape(len(rows), len(attributes))
    bad = np.argwhere((values != -1) & (values != 1))
    if len(bad):
        row, col = (int(x) for x in bad[0])
        raise DataError(
            f"'{path}' line {numbers[row]}: attribute '{attributes[col]}' is {values[row, col]}; expected -1 or 1"
        )
    if int(lines[0]) != len(files):
        raise DataError(f"'{path}': line 1 declares {int(lines[0])} images but {len(files)} are listed")
    return AttributeTable(path, attributes, files, (values == 1).astype(np.int64), np.array(numbers))


def read_partition(path: Path) -> dict[str, int]:
    """Parse the partition file: ``file split`` per line, split 0 (train), 1 (val) or 2 (test)."""
    partition: dict[str, int] = {}
    for number, line in enumerate(_text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(
                f"'{path}' line {number}: expected '<file> <split>' with split 0, 1 or 2, got '{line.strip()}'"
            )
        partition[parts[0]] = int(parts[1])
    return partition


def split_of(table: AttributeTable, partition: Mapping[str, int], partition_path: Path) -> np.ndarray:
    """Split code [N] of every attribute row; both files must list the same images."""
    missing = [i for i, f in enumerate(table.files) if f not in partition]
    if missing:
        i = missing[0]
        raise DataError(
            f"'{partition_path}' has no split for '{table.files[i]}' ('{table.path}' line {table.lines[i]})"
        )
    extra = sorted(set(partition) - set(table.files))
    if extra:
        raise DataError(f"'{partition_path}' lists '{extra[0]}', which has no attributes in '{table.path}'")
    return np.array([partition[f] for f in table.files], dtype=np.int64)


class JpegImages:
    """Lazily loaded images uint8 [H, W, 3], read and resized by ``processor`` (as prediction
    reads them); indexable like an array."""

    def __init__(self, folder: Path, files: Sequence[str], processor: ImageProcessor) -> None:
        self.folder = folder
        self.files = list(files)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        path = self.folder / self.files[index]
        try:
            image = self.processor.load(path)  # float [3, H, W] in [0, 1]
        except DataError as err:
            raise DataError(f"CelebA {err}") from None
        return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()

    def materialize(self) -> np.ndarray:
        """All images at once, uint8 [N, H, W, 3]."""
        out = np.empty((len(self), *self.processor.size, 3), dtype=np.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out


class CelebADataModule(SplitDataModule):
    """CelebA from ``root/celeba/`` (list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/).

    40 binary tasks, one per attribute (classes ``no``/``yes``); splits from the partition
    file. Images are decoded and resized per item, or all up front when ``in_memory``.
    """

    def __init__(self, root: str, image_size: Sequence[int] = (64, 64), in_memory: bool = False, **loader: Any) -> None:
        super().__init__(root, **loader)
        self.image_size = check_image_size(image_size)
        self.in_memory = in_memory
        self._table: AttributeTable | None = None
        self._split_codes: np.ndarray | None = None

    def path(self, name: str) -> Path:
        """A CelebA file or folder under the root; a DataError when it is missing."""
        return require_file(self.root / CelebA.base_folder / name, "CelebA", CelebA.base_folder)

    def table(self) -> AttributeTable:
        """The attribute file, parsed once."""
        if self._table is None:
            self._table = read_attributes(self.path("list_attr_celeba.txt"))
        return self._table

    def split_codes(self) -> np.ndarray:
        """Split code (0 train, 1 val, 2 test) of every attribute row, read once."""
        if self._split_codes is None:
            partition_path = self.path("list_eval_partition.txt")
            self._split_codes = split_of(self.table(), read_partition(partition_path), partition_path)
        return self._split_codes

    def task_specs(self) -> list[TaskSpec]:
        return [TaskSpec(name, "binary", CELEBA_CLASSES) for name in self.table().attributes]

    def processor(self) -> ImageProcessor:
        return ImageProcessor(size=list(self.image_size), mean=list(CELEBA_MEAN), std=list(CELEBA_STD))

    def prepare_data(self) -> None:
        """Fail early (one DataError) when a file or the image folder is missing."""
        for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"):
            self.path(name)

    def build_source_split(self, split: str) -> Dataset:
        table = self.table()
        rows = np.flatnonzero(self.split_codes() == CELEBA_SPLITS[split])
        folder = self.path("img_align_celeba")
        images = JpegImages(folder, [table.files[i] for i in rows], self.processor())
        labels = {name: table.values[rows, j] for j, name in enumerate(table.attributes)}
        names = [f"line {table.lines[i]} ('{table.files[i]}')" for i in rows]
        dataset = checked_dataset(images, labels, self.active_tasks(), f"'{table.path}'", names)
        if self.in_memory:
            dataset.images = images.materialize()
        return dataset


__all__: list[str] = [
    "CELEBA_ATTRIBUTES",
    "CelebADataModule",
    "Cifar100DataModule",
    "CifarUnpickler",
    "load_cifar_pickle",
    "read_attributes",
    "read_partition",
]
