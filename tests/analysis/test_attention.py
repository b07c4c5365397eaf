"""Attention rollout, head pattern statistics and labels, redundancy."""

import math
from functools import partial

import pytest
import torch

from mhc.analysis.attention import (
    HeadLayout,
    PatternMeter,
    RedundancyMeter,
    attention_rollout,
    local_window,
    pattern_labels,
)

L = 6
approx = partial(pytest.approx, abs=1e-5)


def pattern_maps(batch: int = 2) -> torch.Tensor:
    """[B, 4, L, L]: previous token, first token, itself, uniform."""
    previous = torch.zeros(L, L)
    previous[0, 0] = 1.0
    previous[torch.arange(1, L), torch.arange(L - 1)] = 1.0
    first = torch.zeros(L, L)
    first[:, 0] = 1.0
    heads = torch.stack([previous, first, torch.eye(L), torch.full((L, L), 1.0 / L)])
    return heads.expand(batch, -1, -1, -1).clone()


def test_rollout_of_identity_attention_is_identity_and_rows_sum_to_one():
    eye = torch.eye(L).expand(1, 2, L, L)
    assert torch.allclose(attention_rollout([eye, eye]), torch.eye(L)[None])
    rollout = attention_rollout([pattern_maps(1), pattern_maps(1).flip(1)])
    assert torch.allclose(rollout.sum(-1), torch.ones(1, L), atol=1e-6)


def test_rollout_carries_attention_through_layers():
    first = torch.zeros(1, 1, L, L)
    first[..., 0] = 1.0
    # With no residual share, attending to token 0 in every layer attributes everything to it.
    assert torch.allclose(attention_rollout([first, first], residual=0.0)[0, :, 0], torch.ones(L))


def test_pattern_statistics_and_labels_name_each_head():
    meter = PatternMeter()
    meter.update([pattern_maps()], None)
    layout = HeadLayout([[0, 1, 2, 3]], 4)
    stats = meter.compute(layout)
    assert torch.allclose(stats.previous[0], torch.tensor([1.0, 1 / (L - 1), 0.0, 1 / L]), atol=1e-6)
    assert torch.allclose(stats.first[0], torch.tensor([2 / L, 1.0, 1 / L, 1 / L]), atol=1e-6)  # queries 0 and 1 look at 0
    assert torch.allclose(stats.diagonal[0], torch.tensor([1 / L, 1 / L, 1.0, 1 / L]), atol=1e-6)
    assert torch.allclose(stats.column[0], torch.tensor([2 / L, 1.0, 1 / L, 1 / L]), atol=1e-6)
    assert stats.entropy[0, 3].item() == approx(1.0)
    assert stats.entropy[0, 2].item() == approx(0.0)
    assert pattern_labels(stats) == [["positional", "vertical", "diagonal", "broad"]]


def test_a_stripe_on_any_token_is_vertical():
    maps = torch.zeros(1, 1, L, L)
    maps[..., 3] = 1.0  # every query looks at a marker in the middle
    meter = PatternMeter()
    meter.update([maps], None)
    stats = meter.compute(HeadLayout([[0]], 1))
    assert stats.first[0, 0] == 0.0 and stats.column[0, 0] == 1.0
    assert pattern_labels(stats) == [["vertical"]]


def test_padding_never_enters_the_statistics():
    maps = torch.zeros(1, 1, L, L)
    real = 4
    maps[0, 0, :, :real] = 1.0 / real  # uniform over the real keys; rows of padding queries are ignored
    maps[0, 0, real:] = torch.rand(L - real, L)
    padding = torch.arange(L)[None] >= real
    meter = PatternMeter()
    meter.update(list(maps[None]), padding)
    stats = meter.compute(HeadLayout([[0]], 1))
    assert stats.entropy[0, 0].item() == approx(1.0)  # log(4) / log(4): uniform over real keys
    assert stats.first[0, 0].item() == approx(1 / real)


def test_local_window_is_a_band_for_sequences_and_a_neighbourhood_on_image_grids():
    assert local_window(4).sum().item() == 4 + 2 * 3
    grid = local_window(1 + 9, grid=3)
    assert grid[0].sum() == 1  # the CLS token is local only to itself
    assert grid[1 + 4, 1:].sum() == 9  # the centre patch sees all of a 3x3 grid
    assert grid[1 + 0, 1:].sum() == 4  # a corner sees 2x2


def test_redundancy_finds_identical_heads():
    maps = pattern_maps()
    maps = torch.cat([maps, maps[:, :1]], dim=1)  # head 4 copies head 0
    meter = RedundancyMeter()
    meter.update([maps], None)
    similarity = meter.compute()
    assert similarity.shape == (5, 5)
    assert similarity[0, 4].item() == approx(1.0)
    assert similarity[0, 1].item() < 0.5
    assert math.isclose(similarity[2, 2].item(), 1.0, abs_tol=1e-5)


def test_layout_scatters_remaining_heads_to_their_original_places():
    layout = HeadLayout([[0, 2], [1]], 3)
    grid = layout.scatter([torch.tensor([5.0, 6.0]), torch.tensor([7.0])])
    assert torch.equal(torch.isnan(grid), torch.tensor([[False, True, False], [True, False, True]]))
    assert grid[0, 2] == 6.0 and grid[1, 1] == 7.0
    assert layout.names() == ["L0H0", "L0H2", "L1H1"]
