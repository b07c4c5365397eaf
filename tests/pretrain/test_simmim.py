"""SimMIM on the CNN backbones, and the feature maps it relies on."""

import pytest
import torch

from mhc.errors import ConfigError
from mhc.model.backbones import create_backbone
from mhc.pretrain import create_objective
from mhc.pretrain.simmim import masked_l1


def cnn(**options):
    torch.manual_seed(0)
    return create_backbone("cnn", widths=[8, 16], **options)


def simmim(**options):
    return create_objective("simmim", cnn(), **options)


@pytest.mark.parametrize(
    ("name", "options", "reduction"),
    [("cnn", {"widths": [8, 16]}, 2), ("cnn", {"widths": [8, 16, 16], "stem_stride": 2}, 8),
     ("resnet18", {"small_input": True}, 8)],
)
def test_feature_map_pools_to_the_features_and_has_the_stated_reduction(name, options, reduction):
    torch.manual_seed(0)
    backbone = create_backbone(name, **options).eval()
    images = torch.randn(2, 3, 32, 32)
    feature_map = backbone.forward_map(images)
    assert backbone.reduction == reduction
    assert feature_map.shape == (2, backbone.num_features, 32 // reduction, 32 // reduction)
    assert torch.allclose(feature_map.mean(dim=(2, 3)), backbone(images), atol=1e-6)
    if name.startswith("resnet"):  # unchanged from torchvision's own forward
        assert torch.equal(backbone(images), backbone.net(images))


def test_reduction_of_the_default_backbones():
    assert create_backbone("cnn").reduction == 8
    assert create_backbone("resnet18").reduction == 32


def test_the_mask_ratio_is_exact_per_sample_and_whole_patches_are_hidden():
    model = simmim(mask_ratio=0.3, patch_size=4)
    out = model(torch.randn(5, 3, 32, 24))
    assert out.mask.shape == (5, 1, 32, 24) and out.mask.dtype == torch.bool
    patches = out.mask.reshape(5, 8, 4, 6, 4)  # [B, rows, 4, cols, 4]
    per_patch = patches.any(dim=(2, 4))
    assert torch.equal(per_patch, patches.all(dim=(2, 4)))  # a patch is hidden entirely or not at all
    assert per_patch.sum(dim=(1, 2)).tolist() == [round(48 * 0.3)] * 5
    assert out.prediction.shape == out.target.shape == (5, 3, 32, 24)


def test_masking_is_reproducible_under_a_seed_and_differs_across_seeds():
    model, images = simmim(), torch.randn(4, 3, 32, 32)
    a = model(images, generator=torch.Generator().manual_seed(3))
    b = model(images, generator=torch.Generator().manual_seed(3))
    c = model(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.mask, c.mask)
    torch.manual_seed(7)
    d = model(images)
    torch.manual_seed(7)
    assert torch.equal(model(images).mask, d.mask)


def test_hidden_pixels_reach_the_backbone_as_the_mask_token_only():
    model = simmim()
    with torch.no_grad():
        model.mask_token.fill_(5.0)
    images = torch.randn(2, 3, 32, 32)
    mask = model.random_masking(images, torch.Generator().manual_seed(0))
    masked = model.mask_images(images, mask)
    assert (masked[mask.expand_as(masked)] == 5.0).all()
    assert torch.equal(masked[~mask.expand_as(masked)], images[~mask.expand_as(images)])


def test_the_loss_counts_hidden_pixels_only():
    prediction, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[0, :, :4, :4] = True
    mask[1, :, 6:, :] = True
    loss = masked_l1(prediction, target, mask)
    assert torch.allclose(loss, (prediction - target).abs()[mask.expand(-1, 3, -1, -1)].mean())
    changed = prediction.clone()
    changed[~mask.expand_as(changed)] += 10.0  # visible pixels
    assert torch.equal(masked_l1(changed, target, mask), loss)
    changed[0, 1, 0, 0] += 1.0  # a hidden one
    assert masked_l1(changed, target, mask) > loss
    assert masked_l1(prediction, target, torch.zeros_like(mask)) == 0.0


def test_a_given_mask_is_used_and_the_objective_learns():
    model = simmim()
    images = torch.randn(4, 3, 16, 16)
    mask = model(images, generator=torch.Generator().manual_seed(0)).mask
    out = model(images, mask=mask)
    assert torch.equal(out.mask, mask)
    assert torch.allclose(out.loss, masked_l1(out.prediction, images, mask))
    out.loss.backward()
    assert model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(images, mask=mask).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.8 * losses[0]
    original, masked, reconstructed = model.reconstruction(images, model(images, mask=mask))
    assert torch.equal(reconstructed[~mask.expand_as(images)], images[~mask.expand_as(images)])
    assert (masked[mask.expand_as(images)] == 0).all()


def test_resnet_with_a_coarser_mask_patch():
    torch.manual_seed(0)
    model = create_objective("simmim", create_backbone("resnet18", small_input=True), patch_size=16)
    out = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.prediction.shape == (2, 3, 32, 32)
    assert out.mask.float().mean().item() == pytest.approx(round(4 * 0.6) / 4)


def test_configuration_errors_name_the_fix():
    vit = create_backbone("vit_tiny", image_size=32, patch_size=8, dim=32, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match=r"needs a CNN backbone.*'mae' for vit_\*.*'masked_tokens' for seq_\*"):
        create_objective("simmim", vit)
    with pytest.raises(ConfigError, match=r"patch_size must be a positive multiple of the backbone's reduction 8.*got 12"):
        create_objective("simmim", create_backbone("cnn"), patch_size=12)
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\), got 1.0"):
        simmim(mask_ratio=1.0)
    with pytest.raises(ConfigError, match=r"sides divisible by patch_size 4, got 3x30x32"):
        simmim(patch_size=4)(torch.randn(1, 3, 30, 32))
    with pytest.raises(ConfigError, match=r"objective 'simmim'.*unexpected keyword"):
        simmim(mask_size=4)
