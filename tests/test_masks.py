import torch

from mhc.masks import allowed_from_parent, apply_output_mask, hierarchy_matrix


def test_hierarchy_matrix(tasks):
    coarse, fine = tasks[0], tasks[1]
    matrix = hierarchy_matrix(fine, coarse)
    assert matrix.tolist() == [[True, True, False, False, False], [False, False, True, True, True]]


def test_unknown_parent_allows_everything(tasks):
    matrix = hierarchy_matrix(tasks[1], tasks[0])
    allowed = allowed_from_parent(matrix, torch.tensor([0, 1]), parent_known=torch.tensor([True, False]))
    assert allowed[0].sum() == 2 and allowed[1].all()


def test_masked_class_never_predicted_and_has_zero_probability():
    torch.manual_seed(0)
    logits = torch.randn(256, 5) * 10
    allowed = torch.rand(256, 5) < 0.5
    allowed[torch.arange(256), torch.randint(0, 5, (256,))] = True  # at least one class allowed
    masked = apply_output_mask(logits, allowed)
    probs = masked.softmax(-1)
    assert allowed[torch.arange(256), masked.argmax(-1)].all()
    assert (probs[~allowed] == 0).all()
    assert torch.allclose(probs.sum(-1), torch.ones(256))
    assert torch.isfinite(torch.log_softmax(masked, -1)[allowed]).all()
