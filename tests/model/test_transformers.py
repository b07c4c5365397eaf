"""Masked self-attention: padding invariance, causality, attention weights, and the ViT."""

import pytest
import torch

from mhc.model import MultiHeadNet, create_backbone
from mhc.tasks import TaskSpec


def seq(**kwargs):
    torch.manual_seed(0)
    return create_backbone("seq_tiny", vocab_size=20, max_length=32, **kwargs).eval()


@pytest.mark.parametrize("pool", ["mean", "cls", "last"])
def test_padding_never_changes_outputs(pool):
    model = seq(pool=pool)
    ids = torch.randint(1, 20, (3, 7))
    padded = torch.cat([ids, torch.zeros(3, 9, dtype=torch.long)], dim=1)
    assert torch.allclose(model(ids), model(padded), atol=1e-5)


def test_ragged_batch_matches_each_sequence_alone():
    model = seq()
    a, b = torch.randint(1, 20, (1, 5)), torch.randint(1, 20, (1, 9))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0, :5], batch[1] = a[0], b[0]
    out = model(batch)
    assert torch.allclose(out[0], model(a)[0], atol=1e-5) and torch.allclose(out[1], model(b)[0], atol=1e-5)


def test_causal_output_at_t_ignores_later_tokens():
    model = seq(causal=True, pool="last")
    ids = torch.randint(1, 20, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(1, 20, (2, 4))
    before, _, _ = model.forward_tokens(ids)
    after, _, _ = model.forward_tokens(changed)
    assert torch.allclose(before[:, :6], after[:, :6], atol=1e-5)
    assert not torch.allclose(before[:, 6:], after[:, 6:], atol=1e-3)


def test_bf16_on_cpu_takes_the_explicit_product_for_short_sequences_only():
    from mhc.model.backbones.attention import EXPLICIT_BF16_CPU_MAX_LENGTH, explicit_is_faster

    short = torch.zeros(2, 3, EXPLICIT_BF16_CPU_MAX_LENGTH, 8)
    long = torch.zeros(2, 3, EXPLICIT_BF16_CPU_MAX_LENGTH + 1, 8)
    assert explicit_is_faster(short.bfloat16())
    assert not explicit_is_faster(long.bfloat16()) and not explicit_is_faster(short)


def test_bf16_explicit_attention_keeps_masks_and_matches_float32():
    """Under bf16 autocast the short-sequence path is the explicit product: masked keys get
    exactly zero weight, and outputs stay within bf16 rounding of float32 SDPA."""
    model = seq(causal=True, pool="last")
    ids = torch.randint(1, 20, (3, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(1, 20, (3, 4))
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    reference, _, _ = model.forward_tokens(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before, _, _ = model.forward_tokens(ids)
        after, _, _ = model.forward_tokens(changed)
        with_padding, _, _ = model.forward_tokens(padded)
    assert torch.equal(before[:, :6], after[:, :6])  # causal: later tokens change nothing
    torch.testing.assert_close(before, with_padding[:, :10], atol=2e-2, rtol=2e-2)  # padding: rounding only
    assert torch.allclose(before.float(), reference, atol=0.1, rtol=0.05)


def test_attention_weights_only_when_asked_and_respect_masks():
    model = seq(causal=True)
    ids = torch.tensor([[3, 4, 5, 0, 0]])
    _, _, none = model.forward_tokens(ids)
    tokens, padding, maps = model.forward_tokens(ids, need_weights=True)
    assert none == [] and len(maps) == 2 and maps[0].shape == (1, 4, 5, 5)
    weights = maps[0][0]
    assert torch.allclose(weights[:, :3].sum(-1), torch.ones(4, 3), atol=1e-5)
    assert (weights[:, :, 3:] == 0).all()  # padding keys receive nothing
    assert (weights.triu(diagonal=1) == 0).all()  # nothing from the future
    fast, _, _ = model.forward_tokens(ids)
    assert torch.allclose(tokens[0, :3], fast[0, :3], atol=1e-5)  # explicit path == SDPA path


def test_vit_in_multihead_net():
    net = MultiHeadNet({"name": "vit_tiny", "dim": 48, "depth": 2, "num_heads": 3, "patch_size": 16},
                       [TaskSpec("shape", "multiclass", ["a", "b", "c"])])
    out = net(torch.rand(2, 3, 64, 64))
    assert out["shape"].shape == (2, 3)
    tokens, _, maps = net.backbone.forward_tokens(torch.rand(1, 3, 64, 64), need_weights=True)
    assert tokens.shape == (1, 17, 48) and maps[1].shape == (1, 3, 17, 17)


def test_token_backbone_skips_image_normalisation():
    net = MultiHeadNet({"name": "seq_tiny", "vocab_size": 20, "max_length": 16},
                       [TaskSpec("first", "multiclass", ["a", "b"])]).eval()
    ids = torch.randint(1, 20, (2, 8))
    assert torch.allclose(net(ids)["first"], net.heads["first"](net.backbone(ids)))
