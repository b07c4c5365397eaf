"""Shards: ``mhc-shard`` writes any source's samples exactly; ``data=shards`` streams them, each
sample once an epoch (in one process and across 2 DDP processes), resuming mid-epoch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from mhc.api import evaluate, predict, shard, train
from mhc.data import ScenesDataModule
from mhc.data.shards import DESCRIPTION, ShardsDataModule, read_description
from mhc.errors import ConfigError, DataError
from tests.data.recording import killed_and_resumed, recorded, run_recorded

pytest.importorskip("litdata")

SCENES = ["data=scenes", "data.num_train=150", "data.num_val=40", "data.num_test=40", "data.missing_fraction=0.3"]
TINY = ["backbone.widths=[8,16]", "~callbacks.progress_bar", "data.batch_size=32"]


@pytest.fixture(scope="module")
def scenes_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("scenes_cache"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, scenes_cache) -> Path:
    folder = tmp_path_factory.mktemp("shards") / "scenes"
    shard([*SCENES, f"data.cache_dir={scenes_cache}"], output=folder, output_dir=folder.parent / "run")
    return folder


def source_module(cache: str) -> ScenesDataModule:
    return ScenesDataModule(cache_dir=cache, num_train=150, num_val=40, num_test=40, missing_fraction=0.3)


def stored_samples(data: ShardsDataModule, split: str) -> dict[int, dict]:
    data.setup(split)
    dataset = data.splits[split]
    return {int(s["row"]): s for s in (dataset[i] for i in range(len(dataset)))}


@pytest.mark.parametrize("image_format", ["png", "raw", "jpeg"])
def test_shards_hold_every_sample_of_the_source(tmp_path, scenes_cache, image_format):
    """Pixels (exactly for png and raw, close for JPEG), targets, label masks (30% of labels
    missing), binary and multilabel heads: every stored sample is its source sample."""
    folder = tmp_path / image_format
    description = shard([*SCENES, f"data.cache_dir={scenes_cache}", f"image_format={image_format}", "splits=[train,val]"],
                        output=folder, output_dir=tmp_path / "run")
    assert description["splits"] == {"train": {"samples": 150}, "val": {"samples": 40}}
    source = source_module(scenes_cache)
    source.setup("fit")
    expected = source.splits["val"].gather(list(range(40)))
    stored = stored_samples(ShardsDataModule(str(folder)), "val")
    assert sorted(stored) == list(range(40))
    for row, sample in stored.items():
        error = (sample["image"] - expected["image"][row]).abs()
        if image_format == "jpeg":  # lossy: close on average (sharp edges of the drawn shapes blur)
            assert error.mean().item() < 0.02, (row, error.mean().item())
        else:
            assert error.max().item() < 1e-6, (row, error.max().item())
        for task, target in expected["targets"].items():
            assert bool(sample["label_mask"][task]) == bool(expected["label_mask"][task][row]), (row, task)
            if sample["label_mask"][task]:
                assert torch.equal(sample["targets"][task], target[row]), (row, task)
    assert not all(bool(m[r]) for m in expected["label_mask"].values() for r in range(40))  # some labels are missing


def test_text_shards_keep_tokens_and_allowed_sets(tmp_path):
    """A text manifest with a multilabel task and per-row allowed classes: tokens (encoded by the
    tokenizer fitted on the training split), targets and output masks come back as they were."""
    rows = ["text,topic,tags,topic__allowed"]
    for i in range(30):
        topic = ["billing", "hardware", "other"][i % 3]
        allowed = f"{topic}|other" if i % 2 else ""
        rows.append(f"ticket {i} about {topic},{topic},{'a|b' if i % 4 else '-'},{allowed}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    shard(["data=manifest", f"data.train={tmp_path}/train.csv", "data.max_length=24", "splits=[train]"],
          output=tmp_path / "shards", output_dir=tmp_path / "run")
    data = ShardsDataModule(str(tmp_path / "shards"))
    assert data.processor().max_length == 24
    from mhc.data import ManifestDataModule

    source = ManifestDataModule(tmp_path / "train.csv", max_length=24)
    expected = source.build_split("train").gather(list(range(30)))
    stored = stored_samples(data, "train")
    for row, sample in stored.items():
        assert torch.equal(sample["tokens"], expected["tokens"][row])
        assert torch.equal(sample["targets"]["tags"], expected["targets"]["tags"][row])
        assert torch.equal(sample["allowed"]["topic"], expected["allowed"]["topic"][row])


def epoch_rows(loader) -> tuple[list[int], int]:
    rows, batches = [], 0
    for batch in loader:
        batches += 1
        labelled = torch.stack([m for m in batch["label_mask"].values()]).any(0)
        rows += batch["row"][labelled].tolist()
    return rows, batches


def test_one_process_reads_every_sample_once_an_epoch_in_a_new_order(shards):
    data = ShardsDataModule(str(shards), batch_size=32)
    loader = data.train_dataloader()
    first, batches = epoch_rows(loader)
    second, _ = epoch_rows(loader)
    assert sorted(first) == sorted(second) == list(range(150))
    assert first != second  # reshuffled
    assert batches == len(loader) == 5
    assert epoch_rows(data.val_dataloader())[0] == list(range(40))  # evaluation: in order


def test_images_are_resized_as_decoded_to_another_training_size(shards):
    data = ShardsDataModule(str(shards), image_size=[16, 24])
    data.setup("fit")
    assert data.processor().size == [16, 24] and data.splits["train"][0]["image"].shape == (3, 16, 24)
    with pytest.raises(ConfigError, match=r"data.image_size must be \[height, width\]"):
        ShardsDataModule(str(shards), image_size=[0, 3])


def test_training_images_are_augmented_as_they_are_decoded(shards):
    """augment=standard (crop and flip in the loader) applies to the streamed training samples
    and to no evaluation sample."""
    from mhc.data.augment import Augmentation

    plain = ShardsDataModule(str(shards))
    augmented = ShardsDataModule(str(shards))
    augmented.use_augmentation(Augmentation(crop="pad", hflip=0.5, tasks=plain.task_specs()))
    for data in (plain, augmented):
        data.setup("fit")
    rows = {int(s["row"]): s["image"] for s in (plain.splits["train"][i] for i in range(20))}
    changed = [not torch.equal(rows[int(s["row"])], s["image"]) for s in (augmented.splits["train"][i] for i in range(20))]
    assert sum(changed) >= 5
    assert all(torch.equal(plain.splits["val"][i]["image"], augmented.splits["val"][i]["image"]) for i in range(5))


def train_on(shards: Path) -> list[str]:
    return ["data=shards", f"data.path={shards}", "data.batch_size=32"]


def test_a_killed_run_resumes_mid_epoch_as_if_never_stopped(tmp_path, shards):
    """Checkpoints every 2 steps save the loader's position; the run is killed at step 3 (step 3
    is lost with it) and resumed from step 2: it reads the samples an uninterrupted run reads,
    in the same order, the rest of the first epoch and all of the second."""
    (killed,), (resumed,) = killed_and_resumed(tmp_path / "killed", *train_on(shards))
    assert [line["batch"] for line in resumed] == [2, 3, 4, 0, 1, 2, 3, 4]
    proc = run_recorded(tmp_path / "straight", *train_on(shards), "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line["samples"] for line in killed + resumed] == [line["samples"] for line in recorded(tmp_path / "straight")]
    first_epoch = [r for line in killed + resumed if line["epoch"] == 0 for r in line["samples"]]
    assert sorted(first_epoch) == list(range(150))


def test_two_ddp_processes_read_each_sample_once_an_epoch_and_resume_each_where_it_was(tmp_path, shards):
    """150 samples in batches of 32 do not split evenly between 2 processes: litdata gives them
    64 and 86, and the first ends each epoch with an unlabelled filler batch, so both take 3
    steps (no hang). Killed at step 3 and resumed from step 2, each process continues from its
    own position (the first had read all its samples): between them the two runs read every
    sample exactly once an epoch, in a new order each epoch."""
    killed, resumed = killed_and_resumed(tmp_path, *train_on(shards), "trainer=ddp_cpu", ranks=2)
    for epoch in (0, 1):
        rows = [r for lines in killed + resumed for line in lines if line["epoch"] == epoch for r in line["samples"]]
        assert sorted(rows) == list(range(150)), (epoch, Counter(rows).most_common(3))
    assert [line["batch"] for line in killed[0]] == [line["batch"] for line in killed[1]] == [0, 1]
    assert [line["batch"] for line in resumed[0]] == [line["batch"] for line in resumed[1]] == [2, 0, 1, 2]
    orders = [[r for line in killed[1] + resumed[1] if line["epoch"] == e for r in line["samples"]] for e in (0, 1)]
    assert orders[0][:10] != orders[1][:10]


def test_training_evaluation_and_prediction_on_shards_match_the_source(tmp_path, shards, scenes_cache):
    run = train(["data=shards", f"data.path={shards}", *TINY, "trainer.max_epochs=1"],
                output_dir=tmp_path / "train")
    ckpt = run.best_checkpoint
    on_shards = evaluate(["data=shards", f"data.path={shards}", "split=val"], ckpt=ckpt, output_dir=tmp_path / "e1")
    on_source = evaluate([*SCENES, f"data.cache_dir={scenes_cache}", "split=val"], ckpt=ckpt, output_dir=tmp_path / "e2")
    for task, metrics in on_source.items():
        for metric, value in metrics.items():
            assert on_shards[task][metric] == pytest.approx(value, abs=1e-6), (task, metric)
    out = predict(["data=shards", f"data.path={shards}", "data.predict_split=test", "data.num_workers=0"], ckpt=ckpt,
                  output=tmp_path / "p.csv", output_dir=tmp_path / "p")
    import pandas as pd

    table = pd.read_csv(out)
    assert table["name"].tolist() == [f"row {i + 1}" for i in range(40)]
    assert set(table["shape"]) <= {"circle", "square", "triangle", "diamond"}


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("empty", "mhc_shards.json: not valid JSON"),
    ("format", "not an mhc shard description"),
    ("version", "shard format version 7"),
    ("splits", "\"splits\" must map split names"),
    ("tasks", "bad \"tasks\""),
    ("processor", "mhc_shards.json"),
    ("image_format", "\"image_format\" must be one of"),
])
def test_a_bad_description_is_one_line_naming_the_file(tmp_path, shards, case, expected):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = json.loads((shards / DESCRIPTION).read_text())
    bad = {"empty": "", "format": json.dumps({**good, "format": "other"}), "version": json.dumps({**good, "version": 7}),
           "splits": json.dumps({**good, "splits": {"train": {"samples": -1}}}),
           "tasks": json.dumps({**good, "tasks": [{"name": "shape", "kind": "multiclass", "classes": "abc"}]}),
           "processor": json.dumps({**good, "processor": {"kind": "image", "size": [10**9, 1]}}),
           "image_format": json.dumps({**good, "image_format": "gif"})}[case]
    (folder / DESCRIPTION).write_text(bad)
    with pytest.raises(DataError) as err:
        ShardsDataModule(str(folder))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(folder) in str(err.value)


def test_a_folder_without_shards_and_a_missing_split_are_named(tmp_path, shards):
    with pytest.raises(DataError, match="mhc_shards.json: not found"):
        ShardsDataModule(str(tmp_path))
    data = ShardsDataModule(str(shards), test_split="holdout")
    assert not data.has_split("test")
    with pytest.raises(DataError, match="no test split; the shards have"):
        data.build_split("test")


def test_tasks_must_be_the_ones_stored(shards):
    data = ShardsDataModule(str(shards))
    tasks = data.task_specs()
    from dataclasses import replace

    data.set_tasks([replace(tasks[0], classes=list(reversed(tasks[0].classes))), *tasks[1:]])
    with pytest.raises(ConfigError, match="task 'shape': the shards hold a multiclass task with classes"):
        data.setup("fit")


def test_the_writer_never_harms_existing_shards(tmp_path, shards, scenes_cache, monkeypatch):
    """A non-empty output is refused; a write that fails half way leaves the old shards whole."""
    import mhc.data.shards as shards_module

    before = sorted((p.relative_to(shards), p.stat().st_size) for p in shards.rglob("*"))
    with pytest.raises(ConfigError, match="is not an empty folder"):
        shard([*SCENES, f"data.cache_dir={scenes_cache}"], output=shards, output_dir=tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not shards"):
        shard([*SCENES, f"data.cache_dir={scenes_cache}", "overwrite=true"], output=tmp_path / "other", output_dir=tmp_path / "run")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    write_split = shards_module.write_split

    def failing(dataset, *args, **kwargs):
        if "test" in str(args[1]):
            raise DataError("the disk is full")
        return write_split(dataset, *args, **kwargs)

    monkeypatch.setattr(shards_module, "write_split", failing)
    with pytest.raises(DataError, match="the disk is full"):  # train and val were written, test fails
        shard([*SCENES, f"data.cache_dir={scenes_cache}", "overwrite=true", "data.num_train=20"], output=shards,
              output_dir=tmp_path / "run")
    assert sorted((p.relative_to(shards), p.stat().st_size) for p in shards.rglob("*")) == before
    assert not [p.name for p in shards.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert read_description(str(shards))["splits"]["train"] == {"samples": 150}


def test_scenes_sizes_are_checked_up_front():
    with pytest.raises(ConfigError, match="data.num_test must be at least 1, got 0"):
        ScenesDataModule(num_test=0)
    with pytest.raises(ConfigError, match=r"data.missing_fraction must be in \[0, 1\), got 1.5"):
        ScenesDataModule(missing_fraction=1.5)
