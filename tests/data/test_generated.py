import numpy as np
import pytest

from mhc.data.generated import generate_split, load_or_generate, scene_tasks
from mhc.data.labels import ArrayDataset
from mhc.errors import ConfigError


def test_deterministic_and_cached(tmp_path):
    a_images, a_labels = load_or_generate(tmp_path, "train", 50, seed=3, missing_fraction=0.2)
    b_images, b_labels = load_or_generate(tmp_path, "train", 50, seed=3, missing_fraction=0.2)
    fresh_images, _ = generate_split(50, 3, 0.2)
    assert len(list(tmp_path.glob("scenes-train-*.npz"))) == 1
    assert np.array_equal(a_images, b_images) and np.array_equal(a_images, fresh_images)
    assert all(np.array_equal(a_labels[k], b_labels[k]) for k in a_labels)
    other, _ = load_or_generate(tmp_path, "train", 50, seed=4, missing_fraction=0.2)
    assert not np.array_equal(a_images, other)


def test_labels_respect_task_contract():
    images, labels = generate_split(400, 0, missing_fraction=0.25)
    assert images.shape == (400, 64, 64, 3) and images.dtype == np.uint8
    tasks = {t.name: t for t in scene_tasks()}
    for name, task in tasks.items():
        missing = (labels[name][:, 0] if task.kind == "multilabel" else labels[name]) == -1
        assert missing.any() == task.masked
        if task.masked:
            assert 0.15 < missing.mean() < 0.35
    known = (labels["color"] >= 0) & (labels["tone"] >= 0)
    tone_names = np.array(tasks["tone"].classes)[labels["tone"][known]]
    color_names = np.array(tasks["color"].classes)[labels["color"][known]]
    for tone, color in zip(tone_names, color_names):
        assert color in tasks["color"].allowed_by_parent[tone]


def test_dataset_sample_format():
    images, labels = generate_split(10, 0, 0.5)
    sample = ArrayDataset(images, labels, scene_tasks())[0]
    assert sample["image"].shape == (3, 64, 64) and 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert set(sample["targets"]) == set(sample["label_mask"]) == {t.name for t in scene_tasks()}
    assert sample["targets"]["marks"].shape == (4,)


def test_train_fraction_keeps_a_fixed_subset_of_the_training_split_only():
    from mhc.data import ScenesDataModule

    def train_images(fraction: float, seed: int):
        data = ScenesDataModule(num_train=200, num_val=20, num_test=20, train_fraction=fraction, seed=seed)
        data.setup("fit")
        return data.splits["train"], len(data.splits["val"])

    subset, val_size = train_images(0.05, seed=0)
    again, _ = train_images(0.05, seed=0)
    assert len(subset) == 10 and val_size == 20
    assert subset.indices == again.indices and subset.indices == sorted(subset.indices)
    with pytest.raises(ConfigError, match=r"data.train_fraction must be in \(0, 1\]"):
        ScenesDataModule(train_fraction=0.0)


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "other samples"])
def test_a_damaged_cache_is_generated_again(tmp_path, damage, caplog):
    images, labels = load_or_generate(tmp_path, "val", 40, seed=1, missing_fraction=0.1)
    (path,) = tmp_path.glob("scenes-val-*.npz")
    whole = path.read_bytes()
    if damage == "other samples":  # a file that reads, with too few samples
        np.savez(path, images=images[:3], **{f"label_{k}": v[:3] for k, v in labels.items()})
    else:
        path.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "text": b"not a cache"}[damage])
    with caplog.at_level("WARNING", logger="mhc"):
        again, again_labels = load_or_generate(tmp_path, "val", 40, seed=1, missing_fraction=0.1)
    assert f"the cached data {path} " in caplog.text and "generating it again" in caplog.text
    assert np.array_equal(again, images) and all(np.array_equal(again_labels[k], v) for k, v in labels.items())
    assert path.read_bytes() == whole  # rebuilt, so the next run reads it
