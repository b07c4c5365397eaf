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
