"""The multi-task step: gradient methods give the update they promise, on either gradient
source, with label-masked tasks, and inside a real Lightning fit."""

import pytest
import torch

from mhc.losses import batch_losses
from mhc.processing.processors import ImageProcessor
from mhc.training import MultiHeadModule
from mhc.training.balancing import gradient_cosines, gradient_step, loss_step
from mhc.weighting import Weighting


class GradSum(Weighting):
    """A gradient method whose combination is the plain sum (weights 1)."""

    needs_grads = True

    def combine(self, grads, losses, tasks):
        self.seen = tasks.tolist()
        return grads.sum(0), torch.ones(len(grads))


class Keep(Weighting):
    """A gradient method that keeps only the first present task's gradient."""

    needs_grads = True

    def combine(self, grads, losses, tasks):
        w = torch.zeros(len(grads))
        w[0] = 1.0
        return w @ grads, w


def make_batch(tasks, n=6, absent=()):
    torch.manual_seed(1)
    targets = {
        "coarse": torch.randint(0, 2, (n,)), "fine": torch.randint(0, 2, (n,)),
        "flag": torch.randint(0, 2, (n,)).float(), "tags": torch.randint(0, 2, (n, 3)).float(),
    }
    targets["fine"] = torch.where(targets["coarse"] == 0, targets["fine"], targets["fine"] + 2)
    mask = {t.name: torch.ones(n, dtype=torch.bool) for t in tasks}
    for name in absent:
        mask[name] = torch.zeros(n, dtype=torch.bool)
    return {"image": torch.rand(n, 3, 32, 32), "targets": targets, "label_mask": mask}


def step_grads(net, batch, method, gradients_of):
    net.zero_grad()
    features = net.forward_features(batch["image"])
    step = gradient_step(method, list(net.tasks), features, net.forward_heads,
                         lambda logits: batch_losses(net.tasks, net.hierarchy, logits, batch), batch["label_mask"],
                         shared=list(net.backbone.parameters()), gradients_of=gradients_of)
    step.objective.backward()
    return step, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def plain_grads(net, batch, tasks=None):
    net.zero_grad()
    losses = batch_losses(net.tasks, net.hierarchy, net(batch["image"]), batch)
    sum(v for k, v in losses.items() if tasks is None or k in tasks).backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("gradients_of", ["representation", "parameters"])
def test_sum_of_task_gradients_equals_plain_backward(tiny_net, tasks, gradients_of):
    batch = make_batch(tasks)
    step, got = step_grads(tiny_net.train(), batch, GradSum(len(tasks)), gradients_of)
    want = plain_grads(tiny_net, batch)
    assert step.grads.shape[0] == len(tasks)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("gradients_of", ["representation", "parameters"])
def test_shared_part_gets_the_combined_gradient_heads_their_own(tiny_net, tasks, gradients_of):
    batch = make_batch(tasks)
    _, got = step_grads(tiny_net.train(), batch, Keep(len(tasks)), gradients_of)
    only_first = plain_grads(tiny_net, batch, tasks={"coarse"})
    every = plain_grads(tiny_net, batch)
    for name, grad in got.items():
        if name.startswith("backbone."):  # the method kept the first task's gradient only
            torch.testing.assert_close(grad, only_first[name], rtol=1e-4, atol=1e-6, msg=name)
        else:  # every head still learns from its own loss
            torch.testing.assert_close(grad, every[name], rtol=1e-4, atol=1e-6, msg=name)


def test_absent_task_gets_no_gradient_and_no_weight(tiny_net, tasks):
    batch = make_batch(tasks, absent=("flag",))
    method = GradSum(len(tasks))
    step, got = step_grads(tiny_net.train(), batch, method, "representation")
    assert method.seen == [0, 1, 3] and "flag" not in step.weights
    assert step.present == ("coarse", "fine", "tags")
    assert all(torch.count_nonzero(g) == 0 for k, g in got.items() if k.startswith("heads.flag."))


def test_loss_step_weights_present_tasks_only(tiny_net, tasks):
    from mhc.weighting import create

    batch = make_batch(tasks, absent=("tags",))
    logits = tiny_net(batch["image"])
    losses = batch_losses(tiny_net.tasks, tiny_net.hierarchy, logits, batch)
    step = loss_step(create("static", 4, weights=[1, 2, 3, 4]), list(tiny_net.tasks), losses, logits, batch["label_mask"])
    assert step.weights == {"coarse": 1.0, "fine": 2.0, "flag": 3.0}
    torch.testing.assert_close(step.objective, losses["coarse"] + 2 * losses["fine"] + 3 * losses["flag"])


def test_gradient_cosines():
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    torch.testing.assert_close(gradient_cosines(g), torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]))


def test_gradient_method_trains_with_manual_optimization_and_accumulation(tasks, tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from mhc.weighting.base import _REGISTRY

    _REGISTRY.setdefault("test_grad_sum", GradSum)
    config = {"backbone": {"name": "cnn", "widths": [8, 16], "stem_stride": 2}, "tasks": [t.to_dict() for t in tasks],
              "processor": ImageProcessor().to_dict()}
    module = MultiHeadModule(config, weighting={"name": "test_grad_sum", "grads": "representation"},
                             accumulate_grad_batches=2, gradient_clip_val=1.0)
    assert not module.automatic_optimization
    batches = [make_batch(tasks, n=4) for _ in range(4)]
    loader = DataLoader(batches, batch_size=None)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0,
                         log_every_n_steps=2)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2  # 4 batches, 2 per optimizer step
    # gradient conflict is measured on the steps Lightning writes (here the second), not lost between them
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if k.startswith("net.backbone"))
    assert {"train/weight/coarse", "train/conflict/mean_cosine", "train/conflict/coarse~fine"} <= set(trainer.logged_metrics)


@pytest.mark.parametrize("backbone", [
    {"name": "seq_tiny", "dim": 32, "depth": 1, "num_heads": 2},
    {"name": "vit_tiny", "image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "num_heads": 2},
])
def test_gradient_step_on_transformer_backbones(backbone):
    from mhc.data import SequencesDataModule
    from mhc.data.sequences import VOCAB
    from mhc.model import MultiHeadNet

    data = SequencesDataModule(num_train=8, num_val=8, num_test=8, batch_size=8)
    data.set_tasks(data.task_specs())
    batch = next(iter(data.loader("train")))  # variable-length, padded token sequences
    torch.manual_seed(0)
    if backbone["name"] == "seq_tiny":
        net = MultiHeadNet({**backbone, "vocab_size": len(VOCAB), "max_length": 32}, data.tasks, data.processor())
        batch["image"] = batch["tokens"]
    else:
        net = MultiHeadNet(backbone, data.tasks, ImageProcessor(size=[32, 32]))
        batch["image"] = torch.rand(8, 3, 32, 32)
    for gradients_of in ("representation", "parameters"):
        _, got = step_grads(net.train(), batch, GradSum(len(data.tasks)), gradients_of)
        want = plain_grads(net, batch)
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)
