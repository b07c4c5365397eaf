"""Manifest data: task inference, cell parsing, samples, and one-line errors for bad data."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from mhc.config import config_dir
from mhc.data import ManifestDataModule
from mhc.data.manifest import ManifestDataset, infer_tasks, read_manifest
from mhc.errors import ConfigError, DataError
from mhc.processing.processors import ImageProcessor

CONF = config_dir() / "data" / "manifest.yaml"
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None

TRAIN = """\
    image,shape,flag,tags,count,shape__allowed
    img/0.png,circle,yes,x|y,2,circle|square
    img/1.png,square,no,-,10,
    img/2.png,,yes,z,2,
    img/3.png,triangle,no,,10,triangle
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with four tiny images img/0.png .. img/3.png of different sizes and colours."""
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (6 + i, 5), (60 * i, 20, 200)).save(tmp_path / "img" / f"{i}.png")
    return tmp_path


@pytest.fixture
def train(folder: Path) -> Path:
    return write(folder, "train.csv", TRAIN)


def data_module(train: Path, **kwargs) -> ManifestDataModule:
    return ManifestDataModule(train, image_size=[4, 4], batch_size=2, **kwargs)


# -- inference and parsing ---------------------------------------------------------------------


def test_infers_kinds_classes_and_masking(train: Path) -> None:
    tasks = {t.name: t for t in infer_tasks(read_manifest(train))}
    assert list(tasks) == ["shape", "flag", "tags", "count"]
    assert (tasks["shape"].kind, tasks["shape"].classes, tasks["shape"].masked) == (
        "multiclass", ["circle", "square", "triangle"], True,
    )
    assert (tasks["flag"].kind, tasks["flag"].classes, tasks["flag"].masked) == ("binary", ["no", "yes"], False)
    assert (tasks["tags"].kind, tasks["tags"].classes, tasks["tags"].masked) == ("multilabel", ["x", "y", "z"], True)
    assert (tasks["count"].kind, tasks["count"].classes) == ("multiclass", ["2", "10"])  # numeric order


def test_a_label_missing_only_in_validation_or_test_makes_the_task_masked(folder: Path) -> None:
    train = write(folder, "train.csv", "image,flag,shape\nimg/0.png,yes,circle\nimg/1.png,no,square\n")
    val = write(folder, "val.csv", "image,flag,shape\nimg/2.png,,circle\nimg/3.png,no,square\n")
    test = write(folder, "test.csv", "image,flag,shape\nimg/2.png,yes,circle\nimg/3.png,no,\n")
    dm = data_module(train, val=val, test=test)
    assert {t.name: t.masked for t in dm.task_specs()} == {"flag": True, "shape": True}
    assert {t.name: t.masked for t in data_module(train, val=val).task_specs()} == {"flag": True, "shape": False}
    dm.setup("fit")
    assert dm.splits["val"].labels["flag"].tolist() == [-1, 0]  # the missing label is masked out, not an error
    declared = data_module(train, val=val, tasks={"flag": {"masked": False}})
    declared.setup("train")
    with pytest.raises(DataError, match=r"val.csv: row 1 has no label for unmasked task 'flag'"):
        declared.setup("fit")


@pytest.mark.parametrize(
    ("values", "classes"),
    [(["1", "0"], ["0", "1"]), (["True", "False"], ["False", "True"]), (["Y", "n"], ["n", "Y"])],
)
def test_boolean_pairs_are_binary_negative_first(folder: Path, values: list[str], classes: list[str]) -> None:
    path = write(folder, "train.csv", f"image,flag\nimg/0.png,{values[0]}\nimg/1.png,{values[1]}\n")
    (task,) = infer_tasks(read_manifest(path))
    assert (task.kind, task.classes) == ("binary", classes)


def test_missing_value_words_are_missing_labels_not_classes(folder: Path) -> None:
    text = "image,flag,kind\nimg/0.png,0,a\nimg/1.png,NaN,NA\nimg/2.png,1,b\nimg/3.png,null,None\n"
    train = write(folder, "train.csv", text)
    flag, kind = data_module(train).task_specs()
    assert (flag.kind, flag.classes, flag.masked) == ("binary", ["0", "1"], True)
    assert (kind.kind, kind.classes, kind.masked) == ("multiclass", ["a", "b"], True)
    dm = data_module(train)
    dm.setup("fit")
    missing, labelled = dm.splits["train"][1], dm.splits["train"][2]
    assert missing["label_mask"]["flag"].item() is False and missing["label_mask"]["kind"].item() is False
    assert labelled["targets"]["flag"].item() == 1.0 and labelled["targets"]["kind"].item() == 1

    flag, kind = data_module(train, missing_cells=[]).task_specs()  # every word a class name
    assert flag.classes == ["0", "1", "NaN", "null"] and kind.classes == ["NA", "None", "a", "b"]


@pytest.mark.parametrize("order", [["10", "nan", "2", "1"], ["nan", "1", "2", "10"], ["2", "10", "1", "nan"]])
def test_class_order_is_total_whatever_the_cells_order(folder: Path, order: list[str]) -> None:
    rows = "".join(f"img/{i}.png,{value}\n" for i, value in enumerate(order))
    (task,) = data_module(write(folder, "train.csv", "image,count\n" + rows), missing_cells=[]).task_specs()
    assert task.classes == ["1", "10", "2", "nan"]  # not all finite numbers: sorted as text
    (task,) = data_module(write(folder, "train.csv", "image,count\n" + rows)).task_specs()
    assert task.classes == ["1", "2", "10"]  # nan read as missing: numerically


def test_declarations_override_inference(train: Path) -> None:
    declared = {
        "tags": {"classes": ["x", "y", "z", "w"], "loss": "focal"},
        "flag": {"masked": True, "kind": None},
        "count": {"kind": "binary", "classes": ["10", "2"]},
        "shape": {"parent": "count", "allowed_by_parent": {"2": ["circle", "square"]}},
    }
    with pytest.raises(ConfigError, match="parent 'count' must be multiclass"):
        infer_tasks(read_manifest(train), declared)
    declared["shape"] = {"kind": "multiclass", "classes": ["circle", "square", "triangle", "star"]}
    tasks = {t.name: t for t in infer_tasks(read_manifest(train), declared)}
    assert (tasks["tags"].classes, tasks["tags"].loss) == (["x", "y", "z", "w"], "focal")
    assert tasks["flag"].masked and tasks["flag"].kind == "binary"
    assert (tasks["count"].kind, tasks["count"].classes) == ("binary", ["10", "2"])
    assert tasks["shape"].classes[-1] == "star"


def test_parent_and_allowed_by_parent_pass_through(folder: Path) -> None:
    path = write(folder, "train.csv", """\
        image,coarse,fine
        img/0.png,a,a1
        img/1.png,b,b1
        img/2.png,a,a2
    """)
    declared = {"fine": {"parent": "coarse", "allowed_by_parent": {"a": ["a1", "a2"], "b": ["b1"]}}}
    tasks = {t.name: t for t in data_module(path, tasks=declared).task_specs()}
    assert tasks["fine"].parent == "coarse" and tasks["fine"].allowed_by_parent == {"a": ["a1", "a2"], "b": ["b1"]}


def test_dataset_encodes_targets_label_masks_and_allowed(train: Path) -> None:
    manifest = read_manifest(train)
    dataset = ManifestDataset(manifest, infer_tasks(manifest), ImageProcessor(size=[4, 5]))
    assert len(dataset) == 4 and dataset.inputs == [f"img/{i}.png" for i in range(4)]
    first, second, third = dataset[0], dataset[1], dataset[2]

    assert first["image"].shape == (3, 4, 5) and first["image"].dtype == torch.float32
    assert 0.0 <= float(first["image"].min()) and float(first["image"].max()) <= 1.0
    assert first["targets"]["shape"].item() == 0 and third["label_mask"]["shape"].item() is False
    assert first["targets"]["flag"].item() == 1.0 and second["targets"]["flag"].item() == 0.0
    assert first["targets"]["tags"].tolist() == [1.0, 1.0, 0.0]
    assert second["targets"]["tags"].tolist() == [0.0, 0.0, 0.0] and second["label_mask"]["tags"].item() is True
    assert dataset[3]["label_mask"]["tags"].item() is False
    assert first["targets"]["count"].item() == 0 and second["targets"]["count"].item() == 1
    assert list(first["allowed"]) == ["shape"]
    assert first["allowed"]["shape"].tolist() == [True, True, False]
    assert second["allowed"]["shape"].tolist() == [True, True, True]  # empty cell: no restriction
    assert dataset[3]["allowed"]["shape"].tolist() == [False, False, True]


def test_data_module_splits_loaders_and_processor(folder: Path, train: Path) -> None:
    val = write(folder, "val.csv", TRAIN)
    dm = data_module(train, val=val, mean=[0.4, 0.4, 0.4])
    dm.set_tasks(dm.task_specs())
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 4, 4) and batch["targets"]["tags"].shape == (2, 3)
    assert batch["allowed"]["shape"].shape == (2, 3)
    assert len(dm.val_dataloader().dataset) == 4
    assert dm.processor().to_dict() == {"kind": "image", "size": [4, 4], "mean": [0.4] * 3, "std": [0.25] * 3}


def test_predict_split_keeps_order_without_label_columns(folder: Path, train: Path) -> None:
    predict = write(folder, "predict.csv", "id,image\nc,img/3.png\na,img/0.png\nb,img/2.png\n")
    dm = data_module(train, predict=predict)
    dm.setup("predict")
    dataset = dm.splits["predict"]
    assert dataset.input_column == "image" and dataset.inputs == ["img/3.png", "img/0.png", "img/2.png"]
    assert "allowed" not in dataset[0] and not any(dataset[0]["label_mask"].values())
    batch = next(iter(dm.predict_dataloader()))
    torch.testing.assert_close(batch["image"][0], dataset[0]["image"])


def test_absolute_image_paths(folder: Path) -> None:
    other = folder / "elsewhere"
    other.mkdir()
    path = write(other, "train.csv", f"image,flag\n{folder / 'img/0.png'},0\n{folder / 'img/1.png'},1\n")
    dataset = ManifestDataset(read_manifest(path), infer_tasks(read_manifest(path)), ImageProcessor(size=[4, 4]))
    assert dataset[1]["targets"]["flag"].item() == 1.0


def test_hydra_config_instantiates_with_plain_tasks(train: Path) -> None:
    cfg = OmegaConf.load(CONF)
    cfg.train = str(train)
    cfg.tasks = {"flag": {"masked": True}, "tags": {"classes": ["x", "y", "z"]}}
    dm = instantiate(cfg)
    assert isinstance(dm, ManifestDataModule) and dm.batch_size == 64
    json.dumps([t.to_dict() for t in dm.task_specs()])  # plain data, fit for checkpoints
    assert dm.processor().size == [64, 64]


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow is not installed")
def test_parquet_manifest(folder: Path) -> None:
    import pandas as pd

    path = folder / "train.parquet"
    pd.DataFrame({"image": ["img/0.png", "img/1.png"], "flag": [True, False], "n": [1.0, None]}).to_parquet(path)
    tasks = {t.name: t for t in data_module(path, tasks={"n": {"classes": ["1", "2"]}}).task_specs()}
    assert (tasks["flag"].kind, tasks["flag"].classes) == ("binary", ["False", "True"])
    assert tasks["n"].masked


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_is_one_line(folder: Path) -> None:
    path = folder / "train.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="train.parquet: .*needs pyarrow"):
        read_manifest(path)


# -- bad data ----------------------------------------------------------------------------------

VAL_HEADER = "image,shape,flag,tags,count"
BAD_DATA = {
    "missing manifest": ({"train": None}, ["nowhere.csv", "not found"]),
    "no image column": ({"train": "path,flag\nimg/0.png,0\nimg/1.png,1\n"}, ["train.csv", "no 'image' or 'text' column", "exactly one input column"]),
    "missing image": (
        {"train": "image,flag\nimg/0.png,0\nimg/9.png,1\nimg/8.png,1\n"},
        ["train.csv: row 2, column 'image'", "9.png' not found", "1 more row)"],
    ),
    "empty image cell": ({"train": "image,flag\nimg/0.png,0\n,1\n"}, ["train.csv: row 2, column 'image'", "no image path"]),
    "label outside vocabulary": (
        {"val": f"{VAL_HEADER}\nimg/0.png,circle,yes,x,2\nimg/1.png,hexagon,no,y,2\n"},
        ["val.csv: row 2, column 'shape'", "unknown class 'hexagon'"],
    ),
    "binary label outside vocabulary": (
        {"val": f"{VAL_HEADER}\nimg/0.png,circle,maybe,x,2\n"},
        ["val.csv: row 1, column 'flag'", "unknown class 'maybe'", "['no', 'yes']"],
    ),
    "unknown column in val": (
        {"val": f"{VAL_HEADER},colour\nimg/0.png,circle,yes,x,2,red\n"},
        ["val.csv", "unknown column 'colour'"],
    ),
    "task column missing in val": (
        {"val": "image,shape,flag,tags\nimg/0.png,circle,yes,x\n"},
        ["val.csv", "no column for task 'count'"],
    ),
    "declared task without column": ({"tasks": {"weather": {"kind": "binary"}}}, ["train.csv", "declared task 'weather'"]),
    "unknown multilabel class": (
        {"val": f"{VAL_HEADER}\nimg/0.png,circle,yes,x|w,2\n"},
        ["val.csv: row 1, column 'tags'", "unknown class 'w'"],
    ),
    "allowed names unknown class": (
        {"train": "image,shape,shape__allowed\nimg/0.png,a,a|c\nimg/1.png,b,\n"},
        ["train.csv: row 1, column 'shape__allowed'", "unknown class 'c'"],
    ),
    "allowed excludes own label": (
        {"train": "image,shape,shape__allowed\nimg/0.png,a,\nimg/1.png,b,a\n"},
        ["train.csv: row 2", "task 'shape'", "allowed set excludes it"],
    ),
    "allowed names no class": (
        {"train": "image,shape,shape__allowed\nimg/0.png,a,|\nimg/1.png,b,\n"},
        ["train.csv: row 1, column 'shape__allowed'", "at least one class"],
    ),
    "allowed without task": (
        {"train": "image,shape,kind__allowed\nimg/0.png,a,\nimg/1.png,b,\n"},
        ["train.csv", "unknown column 'kind__allowed'"],
    ),
    "allowed on binary task": (
        {"train": "image,flag,flag__allowed\nimg/0.png,0,\nimg/1.png,1,\n"},
        ["train.csv", "column 'flag__allowed'", "multiclass"],
    ),
    "unlabelled row of a task declared unmasked": (
        {"val": f"{VAL_HEADER}\nimg/0.png,circle,yes,x,2\nimg/1.png,circle,,x,2\n", "tasks": {"flag": {"masked": False}}},
        ["val.csv: row 2", "unmasked task 'flag'"],
    ),
    "header-only split": ({"val": f"{VAL_HEADER}\n"}, ["val.csv", "no data rows"]),
    "empty split file": ({"val": ""}, ["val.csv", "empty"]),
    "task without labels": ({"train": "image,shape,flag\nimg/0.png,a,\nimg/1.png,b,\n"}, ["train.csv", "column 'flag' has no labels"]),
    "single class": ({"train": "image,shape\nimg/0.png,a\nimg/1.png,a\n"}, ["train.csv", "column 'shape'", "data.tasks.shape.classes"]),
    "control character in a label": (
        {"val": f"{VAL_HEADER}\nimg/0.png,circle,yes,x,2\nimg/1.png,square\x07,no,y,2\n"},
        ["val.csv: row 2, column 'shape': the cell 'square\\x07' holds a control character; labels are printable text"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_line_naming_file_row_and_column(folder: Path, case: str) -> None:
    files, expected = BAD_DATA[case]
    train = folder / "nowhere.csv" if "train" in files and files["train"] is None else write(
        folder, "train.csv", files.get("train", TRAIN)
    )
    val = write(folder, "val.csv", files["val"]) if "val" in files else None
    with pytest.raises(DataError) as info:
        dm = data_module(train, val=val, tasks=files.get("tasks"))
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_split_without_manifest_names_the_setting(train: Path) -> None:
    dm = data_module(train)
    dm.setup("fit")  # val is optional while fitting ...
    with pytest.raises(DataError, match=r"no val manifest: set data\.val="):
        dm.val_dataloader()  # ... until it is asked for


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_image_in_a_worker_is_a_data_error_without_traceback(folder: Path, corruption: str) -> None:
    bad = folder / "img" / "bad.png"
    if corruption == "garbage":
        bad.write_bytes(b"not a png at all")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    train = write(folder, "train.csv", "image,flag\nimg/0.png,0\nimg/bad.png,1\n")
    dataset = ManifestDataset(read_manifest(train), infer_tasks(read_manifest(train)), ImageProcessor(size=[4, 4]))
    with pytest.raises(DataError) as info:
        list(DataLoader(dataset, batch_size=1, num_workers=1))
    message = str(info.value)
    assert "Traceback" not in message and "\n" not in message
    assert message.startswith(f"{train}: row 2, column 'image': image '")
    assert "bad.png" in message


# -- the in-memory image cache ---------------------------------------------------------------------


def test_the_image_cache_decodes_once_and_serves_the_same_pixels(folder: Path, monkeypatch) -> None:
    for i in range(4):  # stored at the model's size: the cache is exact
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
    train = write(folder, "train.csv", TRAIN)
    plain, cached = data_module(train, cache="none"), data_module(train, cache="memory")
    for dm in (plain, cached):
        dm.setup("fit")
    assert plain.splits["train"].cache is None and cached.splits["train"].cache.dtype == torch.uint8
    for i in range(4):
        assert torch.equal(plain.splits["train"][i]["image"], cached.splits["train"][i]["image"])
    decodes = []
    monkeypatch.setattr(ManifestDataset, "cache_images", lambda self, threads=4: decodes.append(self))
    pixels = cached.splits["train"][3]["image"]
    cached.set_tasks(cached.task_specs())  # new task options rebuild the split, from the pixels decoded before
    cached.setup("fit")
    assert not decodes and torch.equal(cached.splits["train"][3]["image"], pixels)
    monkeypatch.undo()
    automatic = data_module(train)  # auto: four tiny images fit
    automatic.setup("fit")
    assert automatic.splits["train"].cache is not None
    for path in (folder / "img").iterdir():  # decoded once: the files are not read again
        path.unlink()
    assert cached.splits["train"][3]["image"].shape == (3, 4, 4)


def test_a_corrupt_image_met_while_caching_names_its_row(folder: Path) -> None:
    (folder / "img" / "bad.png").write_bytes(b"not a png at all")
    train = write(folder, "train.csv", "image,flag\nimg/0.png,0\nimg/bad.png,1\n")
    with pytest.raises(DataError, match=rf"^{train}: row 2, column 'image': image '.*bad.png' could not be read"):
        data_module(train, cache="memory").setup("fit")
    with pytest.raises(ConfigError, match=r"data.cache must be one of \['auto', 'memory', 'none'\], got 'disk'"):
        data_module(train, cache="disk")


def test_ignored_columns_are_left_out_of_every_split(folder: Path) -> None:
    train = write(folder, "train.csv", "image,flag,flag__allowed,note\nimg/0.png,0,0|1,a\nimg/1.png,1,1,b\n")
    dm = ManifestDataModule(train, val=train, image_size=[4, 4], ignore_columns=["flag__allowed", "note"])
    assert [t.name for t in dm.task_specs()] == ["flag"]
    dm.setup("fit")
    assert "allowed" not in dm.splits["val"][0]
    with pytest.raises(ConfigError, match=r"data.ignore_columns names \['nothing'\], which .*train.csv does not have"):
        ManifestDataModule(train, ignore_columns=["nothing"]).task_specs()
    with pytest.raises(ConfigError, match="may not name an input column"):
        ManifestDataModule(train, ignore_columns=["image"])


def assert_same_batch(batched, expected) -> None:
    assert batched.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_batch(batched[key], value)
        else:
            assert batched[key].dtype == value.dtype and torch.equal(batched[key], value), key


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_a_batch_gathered_whole_equals_its_samples_collated(train: Path, cache: str) -> None:
    from torch.utils.data import default_collate

    from mhc.data.labels import collate

    dm = data_module(train, cache=cache)
    dm.setup("fit")
    dataset = dm.splits["train"]
    rows = [3, 0, 2]
    assert_same_batch(collate(dataset.gather(rows)), default_collate([dataset[i] for i in rows]))
    loaded = next(iter(dm.loader("train")))  # the loader gathers whole batches
    assert_same_batch(loaded, default_collate([dataset[0], dataset[1]]))


def test_the_validation_manifest_is_read_once_for_the_tasks_and_the_split(folder: Path, monkeypatch) -> None:
    import mhc.data.manifest as manifest_module

    train = write(folder, "train.csv", "image,flag\nimg/0.png,yes\nimg/1.png,no\n")
    val = write(folder, "val.csv", "image,flag\nimg/2.png,\nimg/3.png,no\n")
    reads: list[str] = []
    original = manifest_module.read_manifest
    monkeypatch.setattr(manifest_module, "read_manifest", lambda path: reads.append(Path(path).name) or original(path))
    dm = data_module(train, val=val)
    assert dm.task_specs()[0].masked
    dm.setup("fit")
    dm.task_specs()
    assert reads.count("val.csv") == 1 and reads.count("train.csv") == 1


def test_readmes_hierarchy_and_binary_example_declares_what_it_says(tmp_path: Path) -> None:
    import re

    import mhc

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"# my_configs/data/cifar_tree\.yaml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "my_configs" / "data").mkdir(parents=True)
    (tmp_path / "my_configs" / "data" / "cifar_tree.yaml").write_text(textwrap.dedent(block))
    tree = {"road_vehicle": ["automobile", "truck"], "air_water_vehicle": ["airplane", "ship"], "pet": ["cat", "dog"],
            "ungulate": ["deer", "horse"], "non_mammal": ["bird", "frog"]}
    pairs = [(label, group) for group, labels in tree.items() for label in labels]
    rows = [f"img/{i}.png,{label},{'vehicle' if 'vehicle' in group else 'animal'},{group}" for i, (label, group) in enumerate(pairs)]
    train = write(tmp_path, "train.csv", "image,label,kind,group\n" + "\n".join(rows) + "\n")
    cfg = mhc.compose_config("train", ["data=cifar_tree", f"data.train={train}"], config_dir=tmp_path / "my_configs",
                             output_dir=tmp_path / "run")
    tasks = {t.name: t for t in instantiate(cfg.data).task_specs()}
    assert (tasks["kind"].kind, tasks["kind"].classes) == ("binary", ["animal", "vehicle"])
    assert tasks["label"].parent == "group" and tasks["label"].allowed_by_parent == tree
