"""Mixup and CutMix for many heads: one lam for every head, masks intersected, allowed sets joined."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mhc.api import compose_config
from mhc.api.build import build_mixing
from mhc.data.mixing import BatchMixing, mix_labels, paste_box
from mhc.errors import ConfigError
from mhc.losses import batch_losses, multiclass_loss
from mhc.masks import hierarchy_matrix
from mhc.tasks import TaskSpec

COARSE = TaskSpec("coarse", "multiclass", ["animal", "vehicle"])
FINE = TaskSpec("fine", "multiclass", ["cat", "dog", "car", "ship"], masked=True, parent="coarse",
                allowed_by_parent={"animal": ["cat", "dog"], "vehicle": ["car", "ship"]})
SIDE = TaskSpec("side", "multiclass", ["left", "right", "middle"], masked=True)
HAND = TaskSpec("hand", "binary", ["left", "right"], masked=True)
TAGS = TaskSpec("tags", "multilabel", ["sky", "sea", "road"], masked=True)
TASKS = {t.name: t for t in (COARSE, FINE, SIDE, HAND, TAGS)}


def hierarchy(name: str) -> torch.Tensor:
    return hierarchy_matrix(TASKS[name], TASKS[TASKS[name].parent])


def batch() -> dict:
    """Four samples; the partner of sample i is sample 3 - i."""
    return {
        "image": torch.rand(4, 3, 8, 8),
        "targets": {"coarse": torch.tensor([0, 1, 1, 0]), "fine": torch.tensor([1, 2, -1, 0]),
                    "side": torch.tensor([0, 1, 2, 1]), "hand": torch.tensor([1.0, 0.0, 1.0, 0.0]),
                    "tags": torch.tensor([[1.0, 0, 0], [0, 1, 1], [-1, -1, -1], [0, 0, 1]])},
        "label_mask": {"coarse": torch.ones(4, dtype=torch.bool), "fine": torch.tensor([True, True, False, True]),
                       "side": torch.ones(4, dtype=torch.bool), "hand": torch.tensor([True, False, True, True]),
                       "tags": torch.tensor([True, True, False, True])},
        "allowed": {"side": torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)},
    }


def test_every_head_mixes_its_targets_with_the_same_lam():
    lam = 0.7
    mixed = mix_labels(batch(), lam, TASKS, hierarchy)
    soft = mixed["soft_targets"]
    # multiclass: lam * onehot(own) + (1 - lam) * onehot(partner); the partner of sample 0 is sample 3
    torch.testing.assert_close(soft["side"][0], torch.tensor([0.7, 0.3, 0.0]))
    torch.testing.assert_close(soft["coarse"].sum(-1), torch.ones(4))
    torch.testing.assert_close(soft["hand"], torch.tensor([0.7, 0.3, 0.7, 0.3]))  # binary: blended
    torch.testing.assert_close(soft["tags"][0], torch.tensor([0.7, 0.0, 0.3]))  # multilabel: blended per class
    assert mixed["targets"]["side"].tolist() == [0, 1, 2, 1]  # metrics read each pair's larger share


def test_a_label_missing_on_either_sample_masks_the_pair():
    mixed = mix_labels(batch(), 0.6, TASKS, hierarchy)
    assert mixed["label_mask"]["fine"].tolist() == [True, False, False, True]   # sample 2 unlabelled: pair (1, 2)
    assert mixed["label_mask"]["hand"].tolist() == [True, False, False, True]
    assert mixed["label_mask"]["coarse"].all()


def test_output_masks_become_the_union_of_the_pair():
    mixed = mix_labels(batch(), 0.6, TASKS, hierarchy)
    # data-given: sample 0 allows {left, middle}, its partner 3 {right}
    assert mixed["allowed"]["side"][0].tolist() == [True, True, True]
    assert mixed["allowed"]["side"][1].tolist() == [True, True, True]  # {right, middle} | everything
    # derived from the parent's label: sample 0 is an animal, its partner 3 too; 1 and 2 are vehicles
    assert mixed["allowed"]["fine"].tolist() == [[True, True, False, False], [False, False, True, True],
                                                 [False, False, True, True], [True, True, False, False]]
    mixed = mix_labels({**batch(), "targets": {**batch()["targets"], "coarse": torch.tensor([0, 1, 0, 1])}}, 0.6, TASKS, hierarchy)
    assert mixed["allowed"]["fine"].all()  # an animal mixed with a vehicle may be either


def test_mixed_losses_are_lam_weighted_losses_of_both_labels():
    torch.manual_seed(0)
    data = batch()
    logits = {name: torch.randn(4, 1 if t.kind == "binary" else t.num_classes) for name, t in TASKS.items()}
    lam = 0.7
    losses = batch_losses(TASKS, hierarchy, logits, mix_labels(data, lam, TASKS, hierarchy))
    partner = [3, 2, 1, 0]
    own, other = data["targets"]["side"], data["targets"]["side"][partner]
    allowed = data["allowed"]["side"] | data["allowed"]["side"][partner]
    masked = logits["side"].masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected = (lam * F.cross_entropy(masked, own, reduction="none")
                + (1 - lam) * F.cross_entropy(masked, other, reduction="none")).mean()
    torch.testing.assert_close(losses["side"], expected)
    keep = torch.tensor([True, False, False, True])  # hand: sample 1 unlabelled
    target = lam * data["targets"]["hand"] + (1 - lam) * data["targets"]["hand"][partner]
    expected = F.binary_cross_entropy_with_logits(logits["hand"][:, 0][keep], target[keep])
    torch.testing.assert_close(losses["hand"], expected)


@pytest.mark.parametrize("options", [{}, {"class_weights": [1.0, 3.0, 0.5]}, {"label_smoothing": 0.1},
                                     {"loss": "focal", "focal_gamma": 2.0}])
def test_one_hot_probabilities_give_the_loss_of_class_indices(options):
    task = TaskSpec("side", "multiclass", ["left", "right", "middle"], **options)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    allowed = torch.ones(6, 3, dtype=torch.bool)
    allowed[0, 2] = False
    mask = torch.tensor([True, True, True, False, True, True])
    hard = multiclass_loss(task, logits, target, mask, allowed)
    soft = multiclass_loss(task, logits, F.one_hot(target, 3).float(), mask, allowed)
    torch.testing.assert_close(soft, hard)
    if not options:
        torch.testing.assert_close(hard, F.cross_entropy(logits.masked_fill(~allowed, -3.4e38)[mask], target[mask]))


def test_mixup_blends_images_and_cutmix_pastes_a_box_of_the_partner():
    images = torch.rand(4, 3, 16, 16)
    torch.manual_seed(1)
    mixed = BatchMixing(mixup=1.0)({**batch(), "image": images}, TASKS, hierarchy)
    lam = float(mixed["soft_targets"]["side"][0, 0])  # sample 0: side left (own), partner right
    torch.testing.assert_close(mixed["image"], lam * images + (1 - lam) * images.flip(0))
    pasted, lam = paste_box(images, 0.75)
    from_partner = (pasted != images).any(1)  # [B, H, W]: pixels taken from the partner
    assert from_partner[0].float().mean() == pytest.approx(1 - lam, abs=0.01)
    assert torch.equal(pasted[0][:, from_partner[0]], images[3][:, from_partner[0]])
    assert 0.5 <= lam < 1.0  # the area actually left, the box clipped at the border


def test_options_and_inputs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"augment.mixup is a Beta distribution's alpha, >= 0 \(0: off\); got -1"):
        BatchMixing(mixup=-1)
    with pytest.raises(ConfigError, match=r"augment.mix_prob is a probability in \[0, 1\], got 2"):
        BatchMixing(mixup=1, prob=2)
    with pytest.raises(ConfigError, match="mix images; this model reads tokens"):
        BatchMixing(cutmix=1.0)({"tokens": torch.ones(2, 4, dtype=torch.long)}, TASKS, hierarchy)
    assert build_mixing(compose_config("train", ["augment=standard"], output_dir=tmp_path)) is None
    mixing = build_mixing(compose_config("train", ["augment=strong"], output_dir=tmp_path))
    assert (mixing.mixup, mixing.cutmix, mixing.prob, mixing.switch_prob) == (0.8, 1.0, 1.0, 0.5)


def test_a_run_with_mixing_mixes_every_batch_and_trains_every_head(tmp_path, monkeypatch):
    from mhc.api import train
    from tests.api.conftest import compose_config as tiny_config

    mixed = []
    original = BatchMixing.__call__

    def spy(self, batch, tasks, hierarchy):
        out = original(self, batch, tasks, hierarchy)
        mixed.append("soft_targets" in out and set(out["soft_targets"]) == set(tasks))
        return out

    monkeypatch.setattr(BatchMixing, "__call__", spy)
    result = train(tiny_config("train", tmp_path, "augment=strong", "test=false"))
    assert len(mixed) == 3 and all(mixed)  # 96 samples in batches of 32, every one mixed (mix_prob 1)
    assert all(0.0 <= v["loss"] < float("inf") for v in result.metrics["val"].values())
