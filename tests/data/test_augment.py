"""Training augmentation that knows the tasks: a flip moves each label as its task declares."""

from __future__ import annotations

import pytest
import torch

from mhc.api import compose_config
from mhc.api.build import build_augmentation, build_datamodule
from mhc.data import ScenesDataModule
from mhc.data.augment import Augmentation, AugmentedDataset
from mhc.errors import ConfigError
from mhc.tasks import TaskSpec

SIDES = TaskSpec("side", "multiclass", ["left", "right", "middle"], masked=True, hflip={"left": "right"})
HAND = TaskSpec("hand", "binary", ["left-handed", "right-handed"], hflip={"left-handed": "right-handed"})
TAGS = TaskSpec("tags", "multilabel", ["west", "east", "sky"], hflip={"west": "east"})
SHAPE = TaskSpec("shape", "multiclass", ["round", "square"])


def sample(side: int = 0, labelled: bool = True) -> dict:
    image = torch.arange(3 * 4 * 6, dtype=torch.float32).view(3, 4, 6) / 72
    return {"image": image,
            "targets": {"side": torch.tensor(side), "hand": torch.tensor(0.0), "tags": torch.tensor([1.0, 0.0, 1.0]),
                        "shape": torch.tensor(1)},
            "label_mask": {"side": torch.tensor(labelled), "hand": torch.tensor(True), "tags": torch.tensor(True),
                           "shape": torch.tensor(True)},
            "allowed": {"side": torch.tensor([True, False, True])}}


def test_a_flip_moves_each_label_by_its_task_map():
    flipped = Augmentation(hflip=1.0, tasks=[SIDES, HAND, TAGS, SHAPE]).flip(sample())
    original = sample()
    torch.testing.assert_close(flipped["image"], original["image"].flip(-1))
    assert int(flipped["targets"]["side"]) == 1  # left -> right
    assert float(flipped["targets"]["hand"]) == 1.0  # the binary classes swap
    assert flipped["targets"]["tags"].tolist() == [0.0, 1.0, 1.0]  # west -> east, sky stays
    assert int(flipped["targets"]["shape"]) == 1  # invariant
    assert flipped["allowed"]["side"].tolist() == [False, True, True]  # the allowed set moves with the classes
    assert sample()["targets"]["side"] == 0  # the dataset's own sample is not changed


@pytest.mark.parametrize("rule, labelled, flips, kept", [
    ("mask", True, True, False),   # the flipped sample's label is left out
    ("skip", True, False, True),   # a labelled sample is not flipped
    ("skip", False, True, False),  # an unlabelled one is
])
def test_mask_and_skip_rules(rule, labelled, flips, kept):
    task = TaskSpec("side", "multiclass", ["left", "right", "middle"], masked=True, hflip=rule)
    out = Augmentation(hflip=1.0, tasks=[task]).flip(sample(labelled=labelled))
    assert torch.equal(out["image"], sample()["image"].flip(-1)) == flips
    assert bool(out["label_mask"]["side"]) == kept


@pytest.mark.parametrize("hflip, message", [
    ({"left": "up"}, r"hflip names unknown classes \['up'\]; the classes are \['left', 'right', 'middle'\]"),
    ({"left": "right", "right": "middle"}, "hflip maps 'left' to 'right' but 'right' to 'middle'; a flip undoes itself"),
    ("sideways", "hflip must be invariant, mask, skip or a class map"),
])
def test_bad_flip_rules_are_one_config_error(hflip, message):
    with pytest.raises(ConfigError, match=message):
        TaskSpec("side", "multiclass", ["left", "right", "middle"], hflip=hflip)


def object_column(image: torch.Tensor) -> float:
    """The mean column of a scene's coloured object (saturated pixels)."""
    saturated = (image.max(0).values - image.min(0).values) > 0.3
    return float(saturated.nonzero()[:, 1].float().mean())


def test_the_built_in_scenes_declare_how_a_flip_moves_the_position():
    data = ScenesDataModule(num_train=64, num_val=8, num_test=8, seed=0)
    tasks = data.task_specs()
    data.set_tasks(tasks)
    data.use_augmentation(Augmentation(hflip=1.0, tasks=tasks))
    data.setup("fit")
    assert isinstance(data.splits["train"], AugmentedDataset) and not isinstance(data.splits["val"], AugmentedDataset)
    position = next(t for t in tasks if t.name == "position")
    checked = 0
    for index in range(len(data.splits["train"])):
        flipped = data.splits["train"][index]
        if not flipped["label_mask"]["position"]:
            continue
        label = position.classes[int(flipped["targets"]["position"])]
        assert (object_column(flipped["image"]) < 32) == label.endswith("left"), (index, label)
        checked += 1
    assert checked > 40


def test_crops_keep_the_size_and_evaluation_is_never_augmented(tmp_path):
    image = torch.rand(3, 32, 32)
    for crop in ("pad", "resized", "auto"):
        out = Augmentation(crop=crop, trivial=True, erasing=1.0).pixels([32, 32])(image)
        assert out.shape == image.shape and not torch.equal(out, image)
    cfg = compose_config("train", ["augment=strong", "data.num_train=16", "data.num_val=8", "data.num_test=8"], output_dir=tmp_path)
    data = build_datamodule(cfg)
    tasks = data.task_specs()
    data.set_tasks(tasks)
    data.use_augmentation(build_augmentation(cfg, tasks))
    data.setup("fit")
    assert data.augmentation.trivial and data.augmentation.erasing == 0.25
    assert torch.equal(data.splits["val"][0]["image"], data.splits["val"][0]["image"])  # deterministic
    assert not isinstance(data.splits["val"], AugmentedDataset)


@pytest.mark.parametrize("override, message", [
    ("augment.crop=spiral", r"augment.crop must be one of \['none', 'auto', 'pad', 'resized'\], got 'spiral'"),
    ("augment.hflip=2", r"augment.hflip is a probability in \[0, 1\], got 2"),
    ("+augment.rotate=15", "augment: .*unexpected keyword argument 'rotate'"),
])
def test_bad_augment_options_are_one_config_error(override, message, tmp_path):
    cfg = compose_config("train", ["augment=standard", override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        build_augmentation(cfg, [SHAPE])


# -- whole batches on their device (augment.where=device) -----------------------------------------


def collate(samples: list[dict]) -> dict:
    return torch.utils.data.default_collate(samples)


def test_a_batch_flip_moves_labels_as_the_per_sample_flip_does():
    samples = [sample(side=i % 3, labelled=i % 4 != 0) for i in range(8)]
    for i, s in enumerate(samples):
        s["targets"]["hand"] = torch.tensor(float(i % 2))
    tasks = [SIDES, HAND, TAGS, SHAPE, TaskSpec("text", "multiclass", ["a", "b"], hflip="mask")]
    for s in samples:
        s["targets"]["text"], s["label_mask"]["text"] = torch.tensor(1), torch.tensor(True)
    out = Augmentation(hflip=1.0, where="device", tasks=tasks).batch(collate(samples))
    expected = collate([Augmentation(hflip=1.0, tasks=tasks).flip(s) for s in samples])
    torch.testing.assert_close(out["image"], expected["image"])
    for key in ("targets", "label_mask", "allowed"):
        for name, value in expected[key].items():
            torch.testing.assert_close(out[key][name], value, msg=f"{key}.{name}")
    assert not out["label_mask"]["text"].any()  # hflip=mask
    skip = TaskSpec("side", "multiclass", ["left", "right", "middle"], masked=True, hflip="skip")
    out = Augmentation(hflip=1.0, where="device", tasks=[skip]).batch(collate(samples))
    mirrored = [not torch.equal(out["image"][i], samples[i]["image"]) for i in range(8)]
    assert mirrored == [not bool(s["label_mask"]["side"]) for s in samples]  # labelled samples keep their side


def test_batch_crops_are_shifted_windows_of_the_reflect_padded_image():
    images = torch.rand(6, 3, 8, 10)
    flip = torch.tensor([True, False, True, False, False, True])
    from mhc.data.augment import shifted_crops

    crops = shifted_crops(images, 2, flip)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        windows = [padded[i, :, y:y + 8, x:x + 10] for y in range(5) for x in range(5)]
        if flip[i]:
            windows = [w.flip(-1) for w in windows]
        assert any(torch.equal(crops[i], w) for w in windows), i


def test_batch_resized_crops_and_erasing_per_sample():
    from mhc.data.augment import erase_boxes, resized_crops

    ramp = torch.linspace(0, 1, 16).expand(4, 3, 16, 16).contiguous()
    flip = torch.tensor([True, False, True, False])
    out = resized_crops(ramp, (0.3, 1.0), flip)
    assert out.shape == ramp.shape
    steps = out[:, 0, 8].diff()
    assert (steps[flip] <= 1e-6).all() and (steps[~flip] >= -1e-6).all()  # mirrored ramps fall
    assert not torch.equal(out[1], out[3])  # each sample its own crop
    images = torch.ones(64, 3, 20, 20)
    chosen = torch.arange(64) % 2 == 0
    erased = erase_boxes(images, chosen)
    area = (erased[:, 0] == 0).float().mean((1, 2))
    assert (area[~chosen] == 0).all()
    assert ((area[chosen] > 0.01) & (area[chosen] < 0.4)).all()


def test_device_augmentation_runs_on_training_batches_only(tmp_path, monkeypatch):
    from mhc.api import train
    from tests.api.conftest import compose_config as tiny_config

    seen = []
    original = Augmentation.batch

    def spy(self, batch):
        seen.append(batch["image"].shape[0])
        return original(self, batch)

    monkeypatch.setattr(Augmentation, "batch", spy)
    train(tiny_config("train", tmp_path, "augment=standard", "augment.where=device", "augment.erasing=0.5", "test=false"))
    assert seen == [32, 32, 32]  # the three training batches; validation is never augmented
    with pytest.raises(ConfigError, match="TrivialAugmentWide.*runs per sample in the loader; set augment.where=loader"):
        build_augmentation(compose_config("train", ["augment=strong", "augment.where=device"], output_dir=tmp_path), [SHAPE])
