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
    # streamed, the same checkpoint measures and predicts the same
    streamed = [*common, "data.streaming=true"]
    assert evaluate(compose_config("eval", [*streamed, "split=val"], output_dir=tmp_path / "eval2"), ckpt=result.best_checkpoint) == metrics
    out = predict(compose_config("predict", [*streamed, "data.predict_split=test"], output_dir=tmp_path / "pred2"),
                  ckpt=result.best_checkpoint)
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


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


# -- streaming ---------------------------------------------------------------------------------

def loaded_and_streamed(path, split: str, **options) -> tuple[dict, list[dict]]:
    """A split's samples loaded whole (gathered) and streamed (in order), for the same tasks."""
    loaded = HFDataModule(str(path), **options)
    tasks = loaded.task_specs()
    loaded.set_tasks(tasks)
    loaded.setup(split)
    streamed = HFDataModule(str(path), streaming=True, **options)
    streamed.set_tasks(tasks)
    streamed.setup(split)
    samples = list(streamed.splits[split])
    return loaded.splits[split].gather(range(len(samples))), samples


def test_a_streamed_split_gives_the_loaded_samples(text_folder, image_folder, tmp_path):
    """Streaming reads the rows as they come, in blocks, through the same conversion: tokens (a
    tokenizer fitted on the stream's head), targets, label masks and images are the loaded ones."""
    batch, samples = loaded_and_streamed(text_folder, "val", text_column="sentence",
                                         tasks={"urgent": {"kind": "binary"}})
    assert len(samples) == 40
    for i, sample in enumerate(samples):
        assert torch.equal(sample["tokens"], batch["tokens"][i])
        for task in ("topic", "tags", "urgent"):
            assert bool(sample["label_mask"][task]) == bool(batch["label_mask"][task][i])
            assert torch.equal(sample["targets"][task], batch["targets"][task][i])
    parquet = tmp_path / "test.parquet"
    datasets.load_dataset("imagefolder", data_dir=str(image_folder), split="test").to_parquet(str(parquet))
    batch, samples = loaded_and_streamed(parquet, "test", train_split="test", val_split=None, image_size=[16, 16], cache="none")
    torch.testing.assert_close(torch.stack([s["image"] for s in samples]), batch["image"])


def test_streamed_training_shuffles_every_epoch_and_reads_every_row(text_folder):
    data = HFDataModule(str(text_folder), streaming=True, text_column="sentence", shuffle_buffer=50, batch_size=16,
                        tasks={"urgent": {"kind": "binary"}})
    data.set_tasks(data.task_specs())
    loader = data.train_dataloader()
    epochs = [[t for batch in loader for t in batch["tokens"].tolist()] for _ in range(2)]
    assert len(epochs[0]) == len(epochs[1]) == 120
    assert sorted(map(tuple, epochs[0])) == sorted(map(tuple, epochs[1])) and epochs[0] != epochs[1]


def test_a_streamed_label_error_names_its_row_past_the_first_block(tmp_path):
    """Row 300 (in the second block of 256) holds a class the tasks do not have; in the shuffled
    training stream the message says its rows are numbered as read."""
    rows = {"text": [f"sample {i}" for i in range(400)], "kind": ["a" if i % 2 else "b" for i in range(400)]}
    rows["kind"][299] = "zzz"
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "train.parquet"))
    data = HFDataModule(str(tmp_path / "train.parquet"), streaming=True, stream_head=100, val_split="train", test_split=None,
                        tasks={"kind": {"kind": "multiclass"}})
    assert data.task_specs()[0].classes == ["a", "b"]  # inferred from the stream's first 100 rows
    data.set_tasks(data.task_specs())
    data.setup("fit")
    with pytest.raises(DataError, match=r"train\.parquet\[train\]: row 300, column 'kind': unknown class 'zzz'"):
        list(data.splits["val"])
    with pytest.raises(DataError, match=r"train\.parquet\[train\] \(shuffled stream, rows as read\): row \d+, column 'kind'"):
        list(data.train_dataloader())


def test_streaming_reads_in_the_training_process(text_folder):
    from mhc.errors import ConfigError

    with pytest.raises(ConfigError, match="data.streaming=true reads in the training process"):
        HFDataModule(str(text_folder), streaming=True, num_workers=2)


def test_streamed_training_under_two_ddp_processes_keeps_them_in_step(text_folder, tmp_path):
    """120 rows over 2 processes in batches of 16: each streams every other row (60, 4 batches)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mhc.cli.train", "trainer=ddp_cpu", "data=hf", f"data.path={text_folder}", "data.streaming=true",
         "data.text_column=sentence", "+data.tasks.urgent.kind=binary", "data.batch_size=16", "data.num_workers=0",
         "backbone=textcnn", "backbone.dim=16", "backbone.filters=8", "trainer.max_epochs=1", "callbacks.progress_bar=null",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_streamed_dataset_is_written_as_shards_row_for_row(text_folder, tmp_path):
    """mhc-shard reads a streamed split in order: the shards hold its samples as loaded."""
    pytest.importorskip("litdata")
    from mhc.api import shard
    from mhc.data.shards import ShardsDataModule

    common = ["data=hf", f"data.path={text_folder}", "data.text_column=sentence", "+data.tasks.urgent.kind=binary"]
    shard([*common, "data.streaming=true", "splits=[train,val]"], output=tmp_path / "shards", output_dir=tmp_path / "run")
    batch, _ = loaded_and_streamed(text_folder, "val", text_column="sentence", tasks={"urgent": {"kind": "binary"}})
    data = ShardsDataModule(str(tmp_path / "shards"))
    data.setup("validate")
    stored = sorted((data.splits["val"][i] for i in range(40)), key=lambda s: int(s["row"]))
    assert [int(s["row"]) for s in stored] == list(range(40))
    for i, sample in enumerate(stored):
        assert torch.equal(sample["tokens"], batch["tokens"][i])
        assert torch.equal(sample["targets"]["tags"], batch["targets"]["tags"][i])
