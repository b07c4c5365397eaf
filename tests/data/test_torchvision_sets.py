"""CIFAR-100 and CelebA data modules on tiny files written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from mhc.config import config_dir
from mhc.data import CelebADataModule, Cifar100DataModule
from mhc.data.torchvision_sets import CELEBA_ATTRIBUTES, load_cifar_pickle
from mhc.errors import DataError
from mhc.masks import hierarchy_matrix
from mhc.tasks import resolve_tasks

COARSE = [f"super{i:02d}" for i in range(20)]
FINE = [f"class{i:03d}" for i in range(100)]
N_TRAIN, N_TEST = 200, 40


# ------------------------------------------------------------------------------------------- helpers


def fine_to_coarse(fine: np.ndarray) -> np.ndarray:
    """The tiny data's hierarchy: fine class f belongs to superclass f % 20."""
    return fine % 20


def cifar_batch(n: int, seed: int, label: str) -> dict:
    """A dict in the CIFAR-100 python format (what the real files hold)."""
    rng = np.random.default_rng(seed)
    fine = rng.permutation(np.arange(n) % 100)  # every fine class appears when n >= 100
    return {
        "filenames": [f"{label}_{i:05d}.png" for i in range(n)],
        "batch_label": f"{label} batch 1 of 1",
        "fine_labels": fine.tolist(),
        "coarse_labels": fine_to_coarse(fine).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    dump(folder / "train", cifar_batch(N_TRAIN, 0, "training"))
    dump(folder / "test", cifar_batch(N_TEST, 1, "testing"))
    dump(folder / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    return tmp_path


def celeba_values(n: int) -> np.ndarray:
    """Attribute values -1/1 [n, 40], a fixed pattern so rows differ."""
    return np.where((np.arange(n)[:, None] + np.arange(40)[None, :]) % 3 == 0, 1, -1)


CELEBA_PARTITION = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]


def write_celeba(root: Path, values: np.ndarray, partition: list[int]) -> Path:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(values))]
    rows = [f"{f} " + "  ".join(f"{v:2d}" for v in row) for f, row in zip(files, values)]
    header = " ".join(CELEBA_ATTRIBUTES) + " "
    (folder / "list_attr_celeba.txt").write_text("\n".join([str(len(files)), header, *rows]) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition)))
    for i, f in enumerate(files):
        Image.new("RGB", (17, 21), (20 * i, 255, 0)).save(folder / "img_align_celeba" / f, quality=95)
    return root


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    return write_celeba(tmp_path, celeba_values(len(CELEBA_PARTITION)), CELEBA_PARTITION)


# ------------------------------------------------------------------------------------------- CIFAR-100


def test_cifar_tasks_and_hierarchy(cifar_root: Path) -> None:
    coarse, fine = Cifar100DataModule(str(cifar_root)).task_specs()
    assert (coarse.name, coarse.kind, coarse.classes, coarse.masked) == ("coarse", "multiclass", COARSE, False)
    assert (fine.kind, fine.classes, fine.masked, fine.parent) == ("multiclass", FINE, False, "coarse")
    train = cifar_batch(N_TRAIN, 0, "training")
    seen = set(zip(train["coarse_labels"], train["fine_labels"]))
    expected = np.zeros((20, 100), dtype=bool)
    for c, f in seen:
        expected[c, f] = True
    assert torch.equal(hierarchy_matrix(fine, coarse), torch.from_numpy(expected))
    assert all(fine_to_coarse(np.array([f])) == c for c, f in seen)  # fine allowed only under its coarse


def test_cifar_splits_targets_and_images(cifar_root: Path) -> None:
    dm = Cifar100DataModule(str(cifar_root), val_fraction=0.1, seed=3, batch_size=16)
    dm.setup("fit")
    dm.setup("predict")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 180, "val": 20, "test": N_TEST, "predict": N_TEST}
    assert dm.processor().size == [32, 32]

    test = cifar_batch(N_TEST, 1, "testing")
    sample = dm.splits["test"][5]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    expected = torch.from_numpy(test["data"][5].reshape(3, 32, 32)).float() / 255
    assert torch.equal(sample["image"], expected)
    assert sample["targets"]["fine"].item() == test["fine_labels"][5]
    assert sample["targets"]["coarse"].item() == test["coarse_labels"][5]
    assert sample["label_mask"]["fine"].item() and "allowed" not in sample

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32)
    assert batch["targets"]["fine"].dtype == torch.long


def test_cifar_holdout_is_deterministic_and_disjoint(cifar_root: Path) -> None:
    def val_images(seed: int) -> np.ndarray:
        dm = Cifar100DataModule(str(cifar_root), seed=seed)
        dm.setup("validate")
        return dm.splits["val"].images

    train = cifar_batch(N_TRAIN, 0, "training")["data"].reshape(N_TRAIN, 3, 32, 32).transpose(0, 2, 3, 1)
    dm = Cifar100DataModule(str(cifar_root), seed=0)
    dm.setup("fit")
    together = np.concatenate([dm.splits["train"].images, dm.splits["val"].images])
    assert len({a.tobytes() for a in together}) == N_TRAIN == len({a.tobytes() for a in train})
    assert np.array_equal(val_images(0), val_images(0))
    assert not np.array_equal(val_images(0), val_images(1))


def test_cifar_overrides_apply(cifar_root: Path) -> None:
    dm = Cifar100DataModule(str(cifar_root))
    tasks = resolve_tasks(dm.task_specs(), {"fine": {"loss": "focal"}})
    dm.set_tasks(tasks)
    dm.setup("test")
    assert dm.splits["test"].tasks[1].loss == "focal"


class Exploit:
    """Pickles as a call to os.system: loading it with plain pickle would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_cifar_pickle_with_forbidden_global_is_refused(cifar_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = cifar_batch(N_TRAIN, 0, "training")
    batch["batch_label"] = Exploit(marker)
    path = cifar_root / "cifar-100-python" / "train"
    dump(path, batch)
    with pytest.raises(DataError, match=r"refusing to load global '(posix|nt|os)\.system'") as info:
        Cifar100DataModule(str(cifar_root)).task_specs()
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_protocols_load(tmp_path: Path, protocol: int) -> None:
    batch = cifar_batch(3, 0, "x")
    raw = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # the released files (numpy 1.x era) name numpy.core, not numpy._core
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "batch"
    path.write_bytes(raw)
    loaded = load_cifar_pickle(path)
    assert np.array_equal(loaded["data"], batch["data"]) and loaded["data"].dtype == np.uint8
    assert loaded["fine_labels"] == batch["fine_labels"] and loaded["filenames"] == batch["filenames"]


def test_cifar_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        Cifar100DataModule(str(tmp_path / "nowhere")).task_specs()
    assert str(info.value) == (
        f"CIFAR-100 not found: '{tmp_path / 'nowhere' / 'cifar-100-python' / 'meta'}' is missing; "
        "download it yourself and point data.root at the folder that holds cifar-100-python/"
    )
    (tmp_path / "cifar-100-python").mkdir()
    dump(tmp_path / "cifar-100-python" / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    with pytest.raises(DataError, match=r"'.*cifar-100-python/train' is missing"):
        Cifar100DataModule(str(tmp_path)).prepare_data()


def test_cifar_label_out_of_range(cifar_root: Path) -> None:
    batch = cifar_batch(N_TEST, 1, "testing")
    batch["fine_labels"][7] = 100
    path = cifar_root / "cifar-100-python" / "test"
    dump(path, batch)
    dm = Cifar100DataModule(str(cifar_root))
    with pytest.raises(DataError) as info:
        dm.setup("test")
    assert str(info.value) == (
        f"'{path}': image 7 ('testing_00007.png') has fine label 100; expected a class index in [0, 100)"
    )


def test_cifar_test_pair_outside_hierarchy(cifar_root: Path) -> None:
    batch = cifar_batch(N_TEST, 1, "testing")
    batch["coarse_labels"][2] = (batch["coarse_labels"][2] + 1) % 20
    dump(cifar_root / "cifar-100-python" / "test", batch)
    with pytest.raises(DataError, match=r"image 2 \('testing_00002.png'\) .* not allowed under coarse="):
        Cifar100DataModule(str(cifar_root)).setup("test")


# ---------------------------------------------------------------------------------------------- CelebA


def test_celeba_tasks_splits_targets_and_images(celeba_root: Path) -> None:
    dm = CelebADataModule(str(celeba_root), image_size=[12, 10], batch_size=4)
    tasks = dm.task_specs()
    assert [t.name for t in tasks] == CELEBA_ATTRIBUTES
    assert all(t.kind == "binary" and t.classes == ["no", "yes"] and not t.masked for t in tasks)
    dm.setup("fit")
    dm.setup("test")
    dm.setup("predict")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 5, "val": 2, "test": 3, "predict": 3}
    assert dm.processor().size == [12, 10]

    values = celeba_values(len(CELEBA_PARTITION))
    sample = dm.splits["val"][1]  # file 000007.jpg, row 6
    assert sample["image"].shape == (3, 12, 10)
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["image"][1].mean() > 0.9  # the green channel written as 255
    assert [sample["targets"][a].item() for a in CELEBA_ATTRIBUTES] == [float(v == 1) for v in values[6]]
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 3, 12, 10) and batch["targets"]["Smiling"].dtype == torch.float32


def test_celeba_in_memory_matches_lazy(celeba_root: Path) -> None:
    lazy, eager = CelebADataModule(str(celeba_root)), CelebADataModule(str(celeba_root), in_memory=True)
    lazy.setup("test")
    eager.setup("test")
    assert isinstance(eager.splits["test"].images, np.ndarray)
    assert eager.splits["test"].images.shape == (3, 64, 64, 3)
    assert torch.equal(lazy.splits["test"][2]["image"], eager.splits["test"][2]["image"])


def test_celeba_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        CelebADataModule(str(tmp_path)).task_specs()
    assert str(info.value) == (
        f"CelebA not found: '{tmp_path / 'celeba' / 'list_attr_celeba.txt'}' is missing; "
        "download it yourself and point data.root at the folder that holds celeba/"
    )


def test_celeba_missing_image(celeba_root: Path) -> None:
    path = celeba_root / "celeba" / "img_align_celeba" / "000008.jpg"
    path.unlink()
    dm = CelebADataModule(str(celeba_root))
    dm.setup("test")
    with pytest.raises(DataError, match=f"CelebA image '{path}' not found"):
        dm.splits["test"][0]


def test_celeba_bad_rows_name_file_and_line(celeba_root: Path) -> None:
    attr = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    original = list(lines)
    lines[4] = lines[4].rsplit(" ", 1)[0]  # image 3 loses its last column
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        CelebADataModule(str(celeba_root)).task_specs()
    assert str(info.value) == f"'{attr}' line 5: expected a file name and 40 attribute values, got 40 columns"

    lines = list(original)
    lines[6] = lines[6].replace("-1", " 0", 1)  # image 5: a value that is neither -1 nor 1
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"'{attr}' line 7: attribute '\w+' is 0; expected -1 or 1"):
        CelebADataModule(str(celeba_root)).task_specs()


def test_celeba_bad_partition(celeba_root: Path) -> None:
    partition = celeba_root / "celeba" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    lines[3] = "000004.jpg 3"
    partition.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"'{partition}' line 4: expected '<file> <split>'"):
        CelebADataModule(str(celeba_root)).setup("fit")


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name, cls", [("cifar100", Cifar100DataModule), ("celeba", CelebADataModule)])
def test_configs_instantiate(name: str, cls: type, cifar_root: Path) -> None:
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.load(config_dir() / "data" / f"{name}.yaml")})
    cfg.data.root = str(cifar_root)
    dm = instantiate(cfg.data)
    assert isinstance(dm, cls) and dm.batch_size == 128 and dm.num_workers == 0


def task_config(name: str) -> list[str]:
    """The tasks a packaged task config lists (each typed as TaskOptions: ``/task_options@<task>``)."""
    entries = OmegaConf.to_container(OmegaConf.load(config_dir() / "tasks" / f"{name}.yaml"))["defaults"]
    assert all(entry.startswith("/task_options@") for entry in entries)
    return [entry.split("@", 1)[1] for entry in entries]


def test_task_configs_list_the_data_tasks(cifar_root: Path) -> None:
    cifar, celeba = task_config("cifar100"), task_config("celeba")
    assert cifar == ["coarse", "fine"]
    assert celeba == CELEBA_ATTRIBUTES
    assert [t.name for t in Cifar100DataModule(str(cifar_root)).task_specs()] == list(cifar)
