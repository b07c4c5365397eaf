"""MAE on the vision transformer and masked tokens on the sequence transformer."""

import pytest
import torch

from mhc.errors import ConfigError
from mhc.model.backbones import create_backbone
from mhc.pretrain import create_objective
from mhc.pretrain.mae import masked_mean


def vit():
    torch.manual_seed(0)
    return create_backbone("vit_tiny", image_size=32, patch_size=8, dim=32, depth=2, num_heads=2)


def seq():
    torch.manual_seed(0)
    return create_backbone("seq_tiny", vocab_size=12, max_length=16, dim=32, depth=2, num_heads=2)


def test_mae_encodes_only_visible_patches_and_reconstructs_in_patch_order():
    mae = create_objective("mae", vit(), mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    images = torch.rand(3, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(images)), images)
    seen = []
    handle = mae.backbone.encoder.blocks[0].register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    out = mae(images, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert seen == [(3, 1 + 4, 32)]  # CLS + 4 of 16 patches
    assert out.prediction.shape == out.target.shape == (3, 16, 8 * 8 * 3)
    assert (out.mask.sum(1) == 12).all() and out.loss.ndim == 0


def test_mae_loss_ignores_the_visible_patches():
    prediction, target = torch.rand(2, 6, 5), torch.rand(2, 6, 5)
    mask = torch.tensor([[True, False, True, False, False, False], [False] * 5 + [True]])
    loss = masked_mean(((prediction - target) ** 2).mean(-1), mask)
    changed = target.clone()
    changed[~mask] += 10.0  # the visible targets
    assert masked_mean(((prediction - changed) ** 2).mean(-1), mask) == loss
    changed[0, 0] += 1.0  # a hidden one
    assert masked_mean(((prediction - changed) ** 2).mean(-1), mask) != loss
    assert masked_mean(torch.ones(2, 6), torch.zeros(2, 6, dtype=torch.bool)) == 0.0


def test_mae_is_reproducible_under_a_seed_and_learns():
    normalised = create_objective("mae", vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2, norm_pix_loss=True)
    images = torch.rand(4, 3, 32, 32)
    a = normalised(images, generator=torch.Generator().manual_seed(3))
    b = normalised(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    assert torch.allclose(a.target.mean(-1), torch.zeros(4, 16), atol=1e-5)  # per-patch normalised targets
    mae = create_objective("mae", vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    images = torch.rand(4, 3, 1, 1).expand(-1, -1, 32, 32)  # one colour per image: hidden patches are predictable
    optimizer = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    first = None
    for step in range(30):
        loss = mae(images, generator=torch.Generator().manual_seed(step)).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first
    original, masked, reconstructed = mae.reconstruction(images, mae(images))
    assert original.shape == masked.shape == reconstructed.shape == images.shape


def test_masked_tokens_predict_selected_positions_only():
    model = create_objective("masked_tokens", seq(), mask_id=2)
    ids = torch.randint(3, 12, (6, 16))
    ids[:, 10:] = 0
    out = model(ids, generator=torch.Generator().manual_seed(0))
    assert out.prediction.shape == (6, 16, 12) and not out.mask[:, 10:].any()
    logits = out.prediction.detach().clone()
    loss = torch.nn.functional.cross_entropy(logits[out.mask], ids[out.mask])
    assert torch.allclose(out.loss, loss)
    logits[~out.mask] = torch.randn_like(logits[~out.mask])  # unselected positions do not count
    assert torch.allclose(torch.nn.functional.cross_entropy(logits[out.mask], ids[out.mask]), loss)


def test_masked_tokens_work_with_a_cls_token_and_a_causal_mask():
    torch.manual_seed(0)
    for options in ({"pool": "cls"}, {"causal": True, "pool": "last"}):
        backbone = create_backbone("seq_tiny", vocab_size=12, max_length=16, dim=16, depth=1, num_heads=2, **options)
        out = create_objective("masked_tokens", backbone, mask_id=2)(torch.randint(3, 12, (2, 9)))
        assert out.prediction.shape == (2, 9, 12) and torch.isfinite(out.loss)


@pytest.mark.parametrize(("name", "backbone", "options", "message"), [
    ("mae", seq, {}, "objective 'mae' needs a vision transformer"),
    ("masked_tokens", vit, {"mask_id": 2}, "objective 'masked_tokens' needs a sequence transformer"),
    ("masked_tokens", seq, {}, "mask_id must be the tokenizer's <mask> id"),
    ("mae", vit, {"mask_ratio": 1.0}, "mask_ratio must be in"),
    ("mae", vit, {"decoder_width": 8}, "objective 'mae': "),
    ("bert", vit, {}, "objective: unknown 'bert'"),
])
def test_objective_errors_are_clear(name, backbone, options, message):
    with pytest.raises(ConfigError, match=message):
        create_objective(name, backbone(), **options)
