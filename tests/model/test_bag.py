"""The bag of token embeddings pools the learned-weight mean of a text's token embeddings."""

from __future__ import annotations

import torch

from mhc.model.backbones.bag import TokenBag


def bag() -> TokenBag:
    torch.manual_seed(0)
    return TokenBag(vocab_size=10, max_length=6, dim=4).eval()


def test_untrained_weights_give_the_mean_of_the_token_embeddings():
    net = bag()
    ids = torch.tensor([[3, 4, 4, 7, 0, 0]])
    expected = net.embed.weight[[3, 4, 4, 7]].mean(0)
    assert torch.allclose(net(ids)[0], expected, atol=1e-6)


def test_each_token_counts_in_proportion_to_its_learned_weight():
    net = bag()
    with torch.no_grad():
        net.log_weight.weight[5] = torch.log(torch.tensor(3.0))
        net.log_weight.weight[9] = 200.0  # far past exp's range in float32: weights are taken relative to the largest
    ids = torch.tensor([[5, 6, 0, 0, 0, 0], [9, 6, 5, 0, 0, 0]])
    features = net(ids)
    assert torch.allclose(features[0], (3 * net.embed.weight[5] + net.embed.weight[6]) / 4, atol=1e-6)
    assert torch.allclose(features[1], net.embed.weight[9], atol=1e-6)


def test_a_text_of_no_tokens_gives_zero_features_and_gradients_stay_finite():
    net = bag().train()
    ids = torch.tensor([[0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
    features = net(ids)
    features.sum().backward()
    assert torch.equal(features[0], torch.zeros(4))
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
