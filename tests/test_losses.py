import pytest
import torch
import torch.nn.functional as F

from mhc.errors import ConfigError
from mhc.losses import task_loss
from mhc.tasks import TaskSpec


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(16, 4, requires_grad=True), torch.randint(0, 4, (16,)), torch.rand(16) < 0.6


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"class_weights": [1.0, 2.0, 0.5, 3.0]},
                                     {"label_smoothing": 0.2, "class_weights": [1.0, 2.0, 0.5, 3.0]}])
def test_masked_ce_equals_ce_on_labelled_subset(batch, options):
    logits, target, mask = batch
    task = TaskSpec("t", "multiclass", list("abcd"), masked=True, **options)
    expected = F.cross_entropy(
        logits[mask], target[mask], label_smoothing=options.get("label_smoothing", 0.0),
        weight=torch.tensor(options["class_weights"]) if "class_weights" in options else None,
    )
    assert torch.allclose(task_loss(task, logits, target, mask), expected, atol=1e-6)


@pytest.mark.parametrize("kind, loss", [("multiclass", "ce"), ("multiclass", "focal"), ("binary", "bce"),
                                        ("binary", "focal"), ("multilabel", "bce"), ("multilabel", "focal")])
def test_no_labels_gives_exact_zero_and_zero_grad(kind, loss):
    classes = ["no", "yes"] if kind == "binary" else list("abcd")
    task = TaskSpec("t", kind, classes, masked=True, loss=loss)
    logits = torch.randn(8, task.num_outputs, requires_grad=True)
    target = torch.zeros(8, 4) if kind == "multilabel" else torch.zeros(8, dtype=torch.long)
    value = task_loss(task, logits, target, torch.zeros(8, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_bce_equals_subset_with_pos_weight():
    torch.manual_seed(1)
    logits, target, mask = torch.randn(12, 3), (torch.rand(12, 3) < 0.5).float(), torch.rand(12) < 0.5
    task = TaskSpec("t", "multilabel", list("abc"), masked=True, pos_weight=[1.0, 3.0, 0.5])
    expected = F.binary_cross_entropy_with_logits(logits[mask], target[mask], pos_weight=torch.tensor([1.0, 3.0, 0.5]))
    assert torch.allclose(task_loss(task, logits, target, mask), expected, atol=1e-6)


def test_label_reduction_sum_adds_a_samples_labels():
    torch.manual_seed(2)
    logits, target, mask = torch.randn(10, 4), (torch.rand(10, 4) < 0.3).float(), torch.rand(10) < 0.7
    task = TaskSpec("t", "multilabel", list("abcd"), masked=True, label_reduction="sum", pos_weight=[2.0, 1.0, 1.0, 4.0])
    expected = F.binary_cross_entropy_with_logits(logits[mask], target[mask], pos_weight=torch.tensor([2.0, 1.0, 1.0, 4.0]),
                                                  reduction="sum") / mask.sum()
    assert torch.allclose(task_loss(task, logits, target, mask), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="task 't': label_reduction must be one of mean, sum, got 'max'"):
        TaskSpec("t", "multilabel", list("ab"), label_reduction="max")


def test_focal_with_gamma_zero_is_ce(batch):
    logits, target, _ = batch
    focal = TaskSpec("t", "multiclass", list("abcd"), loss="focal", focal_gamma=0.0)
    assert torch.allclose(task_loss(focal, logits, target), F.cross_entropy(logits, target), atol=1e-6)


def test_focal_down_weights_easy_examples():
    task = TaskSpec("t", "multiclass", list("ab"), loss="focal", focal_gamma=2.0)
    easy, hard = torch.tensor([[4.0, -4.0]]), torch.tensor([[0.1, -0.1]])
    target = torch.tensor([0])
    ratio_focal = task_loss(task, easy, target) / task_loss(task, hard, target)
    ratio_ce = F.cross_entropy(easy, target) / F.cross_entropy(hard, target)
    assert ratio_focal < ratio_ce / 100


def test_output_mask_in_loss_ignores_disallowed_logits(batch):
    logits, target, _ = batch
    task = TaskSpec("t", "multiclass", list("abcd"), label_smoothing=0.1)
    allowed = torch.zeros(16, 4, dtype=torch.bool)
    allowed[torch.arange(16), target] = True
    allowed[:, 0] = True
    base = task_loss(task, logits, target, allowed=allowed)
    bumped = logits.detach().clone()
    bumped[~allowed] += 100.0  # disallowed logits must not matter
    assert torch.isfinite(base)
    assert torch.allclose(task_loss(task, bumped, target, allowed=allowed), base, atol=1e-5)


def test_zero_class_weight_with_smoothing_stays_finite(batch):
    logits, target, mask = batch
    task = TaskSpec("t", "multiclass", list("abcd"), masked=True, label_smoothing=0.1, class_weights=[0.0, 1.0, 1.0, 1.0])
    expected = F.cross_entropy(logits[mask], target[mask], label_smoothing=0.1, weight=torch.tensor([0.0, 1.0, 1.0, 1.0]))
    value = task_loss(task, logits, target, mask)
    assert torch.isfinite(value) and torch.allclose(value, expected, atol=1e-6)
