"""Optimizer groups of the training module: a zero learning-rate scale freezes exactly its part."""

import pytest
import torch

from mhc.processing.processors import ImageProcessor
from mhc.tasks import TaskSpec
from mhc.training import MultiHeadModule


def test_zero_lr_scale_leaves_its_group_untouched(tasks):
    tasks = [TaskSpec.from_dict({**t.to_dict(), "lr_scale": 0.0 if t.name == "flag" else 1.0}) for t in tasks]
    config = {"backbone": {"name": "cnn", "widths": [8, 16]}, "tasks": [t.to_dict() for t in tasks], "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), backbone_lr_scale=0.0)
    optimizer = module.configure_optimizers()
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head/coarse", "head/fine", "head/flag", "head/tags"]
    before = {k: v.clone() for k, v in module.named_parameters()}
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for name, value in module.named_parameters():
        frozen = name.startswith(("net.backbone.", "net.heads.flag."))
        assert torch.equal(value, before[name]) == frozen, name


def test_train_and_val_loss_are_the_same_quantity(tasks):
    """``train/loss`` and ``val/loss`` are both sum(task.weight * loss), whatever the weighting
    method trains with: on the same batch and weights they are equal."""
    from tests.training.test_balancing import make_batch

    tasks = [TaskSpec.from_dict({**t.to_dict(), "weight": 2.0 if t.name == "coarse" else 0.5}) for t in tasks]
    config = {"backbone": {"name": "cnn", "widths": [8, 16]}, "tasks": [t.to_dict() for t in tasks], "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config, weighting={"name": "uncertainty"}).eval()  # eval: no batch-norm updates between steps
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **kwargs: None
    batch = make_batch(tasks)
    objective = module.training_step(batch, 0)
    module.validation_step(batch, 0)
    assert logged["train/loss"] == logged["val/loss"]
    losses = module.step.losses(module.net, module.net(batch["image"]), batch)
    expected = sum(t.weight * float(losses[t.name]) for t in tasks)
    assert abs(logged["val/loss"] - expected) < 1e-5
    assert abs(float(objective) - expected) > 1e-3  # uncertainty weighting trains on another combination


def test_heads_with_data_given_allowed_sets_are_also_measured_as_decoded_for_new_inputs():
    """``acc``/``f1`` of a head whose data gives allowed sets count the decisions under them;
    ``acc_open``/``f1_open`` the decisions without them, as a model decides for new inputs."""
    from sklearn.metrics import accuracy_score, f1_score

    task = TaskSpec("label", "multiclass", ["a", "b", "c", "d"], masked=True)
    config = {"backbone": {"name": "cnn", "widths": [8]}, "tasks": [task.to_dict()], "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=generator)
    targets = torch.randint(0, 4, (40,), generator=generator)
    allowed = torch.rand(40, 4, generator=generator) < 0.5
    allowed[torch.arange(40), targets] = True  # a sample's own class is always allowed
    batch = {"image": torch.zeros(40, 3, 8, 8), "targets": {"label": targets}, "label_mask": {"label": torch.ones(40, dtype=torch.bool)},
             "allowed": {"label": allowed}}
    module._update_metrics("val", batch, {"label": logits}, {"label": torch.tensor(1.0)})
    results, flat = module.epoch_scores("val")
    given, free = logits.masked_fill(~allowed, float("-inf")).argmax(-1), logits.argmax(-1)
    assert results["label"]["acc"] == pytest.approx(accuracy_score(targets, given))
    assert results["label"]["f1"] == pytest.approx(f1_score(targets, given, average="macro"))
    assert results["label"]["acc_open"] == pytest.approx(accuracy_score(targets, free))
    assert results["label"]["f1_open"] == pytest.approx(f1_score(targets, free, average="macro"))
    assert flat["val/mean/acc_open"] == results["label"]["acc_open"] and "val/label/acc_open" in module.logged_names()

    module.reset_stage("val")
    del batch["allowed"]  # data without allowed sets: one decoding, reported once
    module._update_metrics("val", batch, {"label": logits}, {"label": torch.tensor(1.0)})
    assert "acc_open" not in module.epoch_scores("val")[0]["label"]
