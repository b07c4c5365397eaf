"""Imbalanced labels: balanced class and positive weights from the training counts, and a sampler
that draws a task's classes equally often, on a skewed toy set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc
from mhc.api import compose_config, train
from mhc.data.balance import (
    balanced_class_weights,
    balanced_pos_weight,
    balancing_weights,
    encoded_labels,
    prior_logits,
)
from mhc.data.labels import MISSING, ArrayDataset
from mhc.errors import ConfigError
from mhc.tasks import TaskSpec

SPECIES = TaskSpec("species", "multiclass", ["cat", "dog", "eel"], masked=True)
TAGS = TaskSpec("tags", "multilabel", ["a", "b", "c"], masked=True)
# 80 cats, 15 dogs, 5 eels, and 20 samples without a label
SKEWED = np.array([0] * 80 + [1] * 15 + [2] * 5 + [-1] * 20)


def test_balanced_class_weights_are_n_over_classes_times_count():
    weights = balanced_class_weights(SPECIES, SKEWED)
    np.testing.assert_allclose(weights, [100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)])
    assert balanced_class_weights(SPECIES, np.array([0, 0, 1, -1]))[2] == 1.0  # a class never seen keeps 1


def test_balanced_pos_weight_is_negatives_over_positives_per_output():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [-1, -1, -1]])
    np.testing.assert_allclose(balanced_pos_weight(TAGS, labels), [1 / 3, 3 / 1, 1.0])  # c never positive: 1


def test_prior_logits_give_back_the_smoothed_base_rates():
    multiclass = torch.tensor(prior_logits(SPECIES, SKEWED))
    torch.testing.assert_close(multiclass.softmax(0), torch.tensor([81 / 103, 16 / 103, 6 / 103]))
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [-1, -1, -1]])
    multilabel = torch.tensor(prior_logits(TAGS, labels))
    torch.testing.assert_close(multilabel.sigmoid(), torch.tensor([4 / 6, 2 / 6, 1 / 6]))  # c never positive: finite
    binary = TaskSpec("b", "binary", ["no", "yes"], masked=True)
    assert torch.tensor(prior_logits(binary, np.array([1, 0, 0, 0, -1]))).sigmoid().item() == pytest.approx(2 / 6)


def test_bias_init_prior_starts_the_heads_at_the_training_base_rates(tmp_path):
    from mhc.api.build import build_datamodule, build_module

    cfg = compose_config("train", ["data.num_train=64", "data.num_val=8", "data.num_test=8", "backbone.widths=[8,16]",
                                   "head.bias_init=prior"], output_dir=tmp_path)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    train_set = datamodule.splits["train"]
    for name, task in module.tasks.items():
        samples = [train_set[i] for i in range(len(train_set))]
        targets = np.stack([np.asarray(s["targets"][name]) for s in samples if s["label_mask"][name]])
        bias = module.net.heads[name].output.bias.detach()
        if task.kind == "multiclass":
            counts = np.bincount(targets, minlength=task.num_classes) + 1.0
            np.testing.assert_allclose(bias.softmax(0).numpy(), counts / counts.sum(), rtol=1e-5)
        else:
            rate = (targets.reshape(len(targets), -1).sum(0) + 1.0) / (len(targets) + 2.0)
            np.testing.assert_allclose(bias.sigmoid().numpy(), rate, rtol=1e-5)


def test_balanced_power_softens_both_kinds_of_weights():
    from mhc.data.balance import resolve_balanced

    data = ArrayDataset(np.zeros((len(SKEWED), 4, 4, 3), np.uint8), {"species": SKEWED}, [SPECIES])
    full = resolve_balanced([TaskSpec("species", "multiclass", ["cat", "dog", "eel"], masked=True, class_weights="balanced")], data)
    root = resolve_balanced([TaskSpec("species", "multiclass", ["cat", "dog", "eel"], masked=True, class_weights="balanced")],
                            data, power=0.5)
    np.testing.assert_allclose(root[0].class_weights, np.sqrt(full[0].class_weights))
    with pytest.raises(ConfigError, match=r"loss.balanced_power must be in \[0, 1\], got 2"):
        resolve_balanced(full, data, power=2)


def test_the_sampler_draws_each_class_equally_often():
    weights = torch.as_tensor(balancing_weights(SPECIES, SKEWED))
    draws = SKEWED[torch.multinomial(weights, 30000, replacement=True, generator=torch.Generator().manual_seed(0))]
    shares = np.bincount(draws[draws >= 0], minlength=3) / (draws >= 0).sum()
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)
    assert abs((draws < 0).mean() - 20 / 120) < 0.02  # unlabelled samples keep the mean weight: still seen


def test_labels_are_read_through_subsets_and_wrappers():
    dataset = ArrayDataset(np.zeros((120, 4, 4, 3), np.uint8), {"species": SKEWED}, [SPECIES])
    subset = torch.utils.data.Subset(dataset, [0, 90, 99, 110])
    assert encoded_labels(subset, "species").tolist() == [0, 1, 2, -1]
    assert encoded_labels(torch.utils.data.ConcatDataset([subset, subset]), "species").tolist() == [0, 1, 2, -1] * 2


def test_balanced_options_through_training(tmp_path):
    cfg = compose_config("train", ["data.num_train=96", "data.num_val=32", "data.num_test=32", "backbone.widths=[8,16]",
                                   "trainer.max_epochs=1", "~callbacks.progress_bar", "test=false",
                                   "tasks.shape.class_weights=balanced", "tasks.outlined.pos_weight=balanced",
                                   "data.balance=size"], output_dir=tmp_path)
    result = train(cfg)
    tasks = mhc.load(result.last_checkpoint).tasks
    assert len(tasks["shape"].class_weights) == 4 and all(w > 0 for w in tasks["shape"].class_weights)
    assert len(tasks["outlined"].pos_weight) == 1 and tasks["outlined"].pos_weight[0] > 0


@pytest.mark.parametrize("overrides, message", [
    (["data.balance=colour"], r"data.balance: unknown task 'colour'; the tasks are \['shape'"),
    (["data.balance=marks"], "data.balance: task 'marks' is multilabel; balance a multiclass or binary task"),
])
def test_bad_balance_is_one_config_error(overrides, message, tmp_path):
    cfg = compose_config("train", ["data.num_train=32", "data.num_val=8", "data.num_test=8", "backbone.widths=[8,16]",
                                   "trainer.max_epochs=1", "~callbacks.progress_bar", *overrides], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_unresolved_balanced_weights_cannot_build_a_module():
    from mhc.processing.processors import ImageProcessor
    from mhc.training import MultiHeadModule

    task = TaskSpec("species", "multiclass", ["cat", "dog"], class_weights="balanced")
    with pytest.raises(ConfigError, match="class_weights=balanced is computed from the training data"):
        MultiHeadModule({"backbone": {"name": "cnn", "widths": [8]}, "tasks": [task.to_dict()],
                         "processor": ImageProcessor().to_dict()})


def test_the_training_loader_of_a_balanced_data_module_samples_by_weight():
    from mhc.data import ScenesDataModule

    data = ScenesDataModule(num_train=64, num_val=8, num_test=8, seed=0, balance="size")
    data.set_tasks(data.task_specs())
    sampler = data.loader("train", shuffle=True).sampler
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler) and sampler.num_samples == 64
    assert not isinstance(data.loader("val").sampler, torch.utils.data.WeightedRandomSampler)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_prior_loss_is_the_log_loss_of_the_smoothed_base_rates(kind):
    from sklearn.metrics import log_loss

    from mhc.data.balance import prior_loss

    rng = np.random.default_rng(0)
    task = TaskSpec("t", kind, ["a", "b", "c"] if kind != "binary" else ["no", "yes"])
    if kind == "multilabel":
        labels = (rng.random((200, 3)) < [0.1, 0.5, 0.8]).astype(np.int64)
        labels[:20] = MISSING
        kept = labels[20:]
        rates = (kept.sum(0) + 1) / (len(kept) + 2)
        expected = np.mean([log_loss(kept[:, j], np.full(len(kept), rates[j]), labels=[0, 1]) for j in range(3)])
    else:
        labels = rng.choice(task.num_classes, 200, p=[0.2, 0.3, 0.5] if kind == "multiclass" else [0.7, 0.3])
        labels[:20] = MISSING
        kept = labels[20:]
        counts = np.bincount(kept, minlength=task.num_classes) + 1.0
        expected = log_loss(kept, np.tile(counts / counts.sum(), (len(kept), 1)), labels=list(range(task.num_classes)))
    assert prior_loss(task, labels) == pytest.approx(expected, rel=1e-6)
    if kind == "multilabel":
        summed = TaskSpec("t", kind, ["a", "b", "c"], label_reduction="sum")
        assert prior_loss(summed, labels) == pytest.approx(3 * expected, rel=1e-6)
