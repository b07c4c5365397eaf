"""Patch masks (MAE) and BERT's token rule."""

import pytest
import torch

from mhc.pretrain.masking import bert_token_mask, random_patch_mask


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_patch_mask_ratio_is_exact_per_sample(ratio):
    m = random_patch_mask(8, 64, ratio, generator=torch.Generator().manual_seed(0))
    assert (m.mask.sum(1) == round(64 * ratio)).all()
    assert m.keep.shape == (8, 64 - round(64 * ratio))
    assert not m.mask.gather(1, m.keep).any()  # kept patches are the visible ones
    # What the MAE decoder does: [visible patches, fillers] put back into patch order.
    patches = torch.arange(64).expand(8, -1)
    filled = torch.cat([patches.gather(1, m.keep), torch.full((8, round(64 * ratio)), -1)], 1)
    assert torch.equal(filled.gather(1, m.restore), torch.where(m.mask, -1, patches))


def test_patch_masks_are_reproducible_under_a_seed():
    a = random_patch_mask(4, 16, 0.75, generator=torch.Generator().manual_seed(1)).mask
    b = random_patch_mask(4, 16, 0.75, generator=torch.Generator().manual_seed(1)).mask
    c = random_patch_mask(4, 16, 0.75, generator=torch.Generator().manual_seed(2)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not all(torch.equal(a[0], row) for row in a[1:])  # per-sample masks differ


def test_bert_rule_never_selects_padding_and_splits_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (400, 64), generator=g)
    ids[:, 48:] = 0  # padding
    out = bert_token_mask(ids, pad_id=0, mask_id=2, vocab_size=50, special_ids=(1,), generator=torch.Generator().manual_seed(1))
    assert not out.selected[:, 48:].any() and (out.inputs[:, 48:] == 0).all()
    rate = out.selected[:, :48].float().mean().item()
    assert 0.14 < rate < 0.17
    chosen = out.selected
    masked = (out.inputs[chosen] == 2).float().mean().item()
    kept = (out.inputs[chosen] == ids[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13  # kept also holds random draws of the same id
    assert torch.equal(out.inputs[~chosen], ids[~chosen])
    replaced = chosen & (out.inputs != 2) & (out.inputs != ids)
    assert replaced.any() and not torch.isin(out.inputs[replaced], torch.tensor([0, 1, 2])).any()  # ordinary ids only


def test_every_sequence_predicts_at_least_one_token():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    out = bert_token_mask(ids, pad_id=0, mask_id=2, vocab_size=10, probability=0.01, generator=torch.Generator().manual_seed(0))
    assert out.selected.sum(1).tolist() == [1, 1] and not out.selected[ids == 0].any()
