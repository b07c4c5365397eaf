"""``data=hf``: Hugging Face datasets the tests write themselves (``save_to_disk``, Parquet, an
image folder), read as manifests are: tasks from the class-label features, labels checked, and
one-line errors naming the dataset, split, row and column."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mhc.api import compose_config, evaluate, predict, train
from mhc.data.hf import HFDataModule
from mhc.errors import DataError

datasets = pytest.importorskip("datasets")

TOPICS = ["billing", "hardware", "other"]
TAGS = ["a", "b", "c"]


def text_dataset(n: int, seed: int) -> "datasets.Dataset":
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 3, n)
    features = datasets.Features({
        "sentence": datasets.Value("string"),
        "topic": datasets.ClassLabel(names=TOPICS),
        "tags": datasets.List(datasets.ClassLabel(names=TAGS)),
        "urgent": datasets.Value("bool"),
        "id": datasets.Value("int64"),
    })
    rows = {
        "sentence": [f"{TOPICS[t]} issue number {i} {'now' if i % 3 == 0 else 'later'}" for i, t in enumerate(topic)],
        "topic": [int(t) if i % 7 else -1 for i, t in enumerate(topic)],  # -1: ClassLabel's missing label
        "tags": [sorted({int(t), int(i % 3)}) if i % 5 else [] for i, t in enumerate(topic)],
        "urgent": [i % 3 == 0 for i in range(n)],
        "id": list(range(n)),
    }
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_text") / "tickets"
    datasets.DatasetDict({"train": text_dataset(120, 0), "validation": text_dataset(40, 1), "test": text_dataset(40, 2)}).save_to_disk(str(folder))
    return folder


def test_class_label_columns_become_tasks_with_the_features_classes(text_folder):
    data = HFDataModule(str(text_folder), text_column="sentence", tasks={"urgent": {"kind": "binary"}})
    tasks = {t.name: t for t in data.task_specs()}
    assert set(tasks) == {"topic", "tags", "urgent"}  # 'id' is no task: not a class label, not declared
    assert tasks["topic"].classes == TOPICS and tasks["topic"].kind == "multiclass" and tasks["topic"].masked
    assert tasks["tags"].kind == "multilabel" and tasks["tags"].classes == TAGS
    assert tasks["urgent"].kind == "binary" and tasks["urgent"].classes == ["false", "true"]
    data.set_tasks(list(tasks.values()))
    data.setup("fit")
    batch = data.splits["train"].gather(range(14))
    source = text_dataset(120, 0)
    expected = [t if t != -1 else None for t in source["topic"][:14]]
    assert [int(v) if m else None for v, m in zip(batch["targets"]["topic"], batch["label_mask"]["topic"])] == expected
    tags = torch.zeros(14, 3)
    for i, row in enumerate(source["tags"][:14]):
        tags[i, row] = 1
    torch.testing.assert_close(batch["targets"]["tags"], tags)


def test_a_text_dataset_trains_evaluates_and_predicts(text_folder, tmp_path):
    common = ["data=hf", f"data.path={text_folder}", "data.text_column=sentence", "+data.tasks.urgent.kind=binary",
              "data.batch_size=32"]
    result = train(compose_config("train", [*common, "backbone=textcnn", "trainer.max_epochs=1", "~callbacks.progress_bar",
                                            "backbone.dim=16", "backbone.filters=8"], output_dir=tmp_path / "run"))
    assert set(result.metrics["test"]) == {"topic", "tags", "urgent"}
    metrics = evaluate(compose_config("eval", [*common, "split=val"], output_dir=tmp_path / "eval"), ckpt=result.best_checkpoint)
    assert set(metrics) == {"topic", "tags", "urgent"}
    out = predict(compose_config("predict", [*common, "data.predict_split=test"], output_dir=tmp_path / "pred"),
                  ckpt=result.best_checkpoint)
    import pandas as pd

    table = pd.read_csv(out)
    assert len(table) == 40 and {"topic", "tags", "urgent"} <= set(table.columns)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ``imagefolder``: class folders of PNG files, read by ``load_dataset`` into Image and ClassLabel features."""
    root = tmp_path_factory.mktemp("hf_images")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, color in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = np.clip(np.array(color) + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_an_image_folder_and_a_parquet_export_read_the_same_images(image_folder, tmp_path):
    data = HFDataModule(str(image_folder), val_split=None, image_size=[16, 16], cache="none")
    (task,) = data.task_specs()
    assert task.name == "label" and task.classes == ["blue", "red"]
    data.set_tasks([task])
    data.setup("test")
    folder_batch = data.splits["test"].gather(range(24))
    parquet = tmp_path / "test.parquet"
    datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="test").to_parquet(str(parquet))
    from_parquet = HFDataModule(str(parquet), train_split="test", val_split=None, test_split="test", image_size=[16, 16],
                                cache="none")
    from_parquet.set_tasks([task])
    from_parquet.setup("test")
    parquet_batch = from_parquet.splits["test"].gather(range(24))
    torch.testing.assert_close(folder_batch["image"], parquet_batch["image"])
    torch.testing.assert_close(folder_batch["targets"]["label"], parquet_batch["targets"]["label"])
    red = folder_batch["image"][:, 0].mean((1, 2)) > folder_batch["image"][:, 2].mean((1, 2))
    assert (red.long() == folder_batch["targets"]["label"]).all()  # each image carries its own label


def test_bad_datasets_and_options_are_one_line_errors(text_folder, tmp_path):
    cases = [
        (dict(path=str(tmp_path / "nothing")), "could not load the split"),
        (dict(path=str(text_folder), train_split="training"), r"no split 'training'; its splits are \['train', 'validation', 'test'\]"),
        (dict(path=str(text_folder), text_column="body"), "data.text_column names column 'body', which the split does not have"),
        (dict(path=str(text_folder)), r"no Image column and no 'text' column \(the columns are"),
        (dict(path=str(text_folder), text_column="sentence", tasks={"kind": {"column": "missing"}}),
         "data.tasks.kind.column names column 'missing'"),
    ]
    for options, message in cases:
        with pytest.raises(DataError, match=message):
            data = HFDataModule(**options)
            data.task_specs()
    bad = text_dataset(10, 0).cast_column("topic", datasets.Value("int64")).map(lambda r, i: {"topic": 7 if i == 4 else r["topic"]},
                                                                               with_indices=True)
    datasets.DatasetDict({"train": bad}).save_to_disk(str(tmp_path / "bad"))
    data = HFDataModule(str(tmp_path / "bad"), text_column="sentence", val_split=None, test_split=None,
                        tasks={"topic": {"classes": ["0", "1", "2"]}})
    with pytest.raises(DataError, match=r"bad\[train\]: row 5, column 'topic'"):
        data.set_tasks(data.task_specs())
        data.setup("fit")


def test_a_default_split_the_dataset_lacks_is_left_out_with_a_message(tmp_path, caplog):
    folder = tmp_path / "no_test"
    datasets.DatasetDict({"train": text_dataset(60, 0), "validation": text_dataset(20, 1)}).save_to_disk(str(folder))
    with caplog.at_level("WARNING", logger="mhc"):
        result = train(compose_config("train", ["data=hf", f"data.path={folder}", "data.text_column=sentence",
                                                "backbone=textcnn", "backbone.dim=16", "backbone.filters=8",
                                                "trainer.max_epochs=1", "~callbacks.progress_bar"], output_dir=tmp_path / "run"))
    assert "test" not in result.metrics and set(result.metrics["val"]) == {"topic", "tags"}
    assert "no_test[test]: the dataset has no split 'test'" in caplog.text and "the test is skipped" in caplog.text


def test_images_stored_as_bytes_read_the_same_cached_or_not(tmp_path):
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8) for i in range(6)]
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"photo": datasets.Image(), "kind": datasets.ClassLabel(names=["x", "y"])})
    data = datasets.Dataset.from_dict({"photo": encoded, "kind": [0, 1, 0, 1, 1, 0]}, features=features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "bytes"))
    read = {}
    for cache in ("none", "memory"):
        module = HFDataModule(str(tmp_path / "bytes"), image_column="photo", val_split=None, test_split=None,
                              image_size=[12, 12], cache=cache)
        module.set_tasks(module.task_specs())
        module.setup("fit")
        read[cache] = module.splits["train"].gather(range(6))
    torch.testing.assert_close(read["none"]["image"], read["memory"]["image"], atol=1 / 255, rtol=0)  # the cache keeps 8 bits
    for cache in read:  # image 2 is stored at the model's size: exact either way
        torch.testing.assert_close(read[cache]["image"][2], torch.from_numpy(pixels[2]).permute(2, 0, 1).float() / 255)
    assert read["none"]["targets"]["kind"].tolist() == [0, 1, 0, 1, 1, 0]


def test_label_values_become_manifest_cells():
    from mhc.data.hf import label_cell

    names = ["x", "y", "z"]
    assert label_cell(2, names, False, -1, "w") == "z" and label_cell(-1, names, False, -1, "w") == ""
    assert label_cell(None, names, False, -1, "w") == "" and label_cell(True, None, False, -1, "w") == "true"
    assert label_cell([0, 2], names, True, -1, "w") == "x|z" and label_cell([], names, True, -1, "w") == "-"
    assert label_cell("x|y", names, True, -1, "w") == "x|y"  # already a manifest cell
    with pytest.raises(DataError, match="w: class index 3 is outside the 3 classes"):
        label_cell(3, names, False, -1, "w")
