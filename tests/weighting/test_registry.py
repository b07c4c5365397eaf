"""Every method is selectable by name, configured by its mhc/conf/weighting file, and honours the
interface: shapes, finiteness, absent tasks, and the pure combine()."""

import re

import pytest
import torch
from omegaconf import OmegaConf

from mhc.config import config_dir
from mhc.errors import ConfigError
from mhc.weighting import available, combine, create
from mhc.weighting.base import _REGISTRY

CONFIGS = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((config_dir() / "weighting").glob("*.yaml"))}
METHODS = [m for m in available() if not m.startswith("test_")]


def build(name: str, num_tasks: int):
    options = {k: v for k, v in CONFIGS[name].items() if k not in ("name", "grads")}
    return create(name, num_tasks, **options)


def test_every_method_has_a_config_and_every_config_a_method():
    assert set(CONFIGS) == set(METHODS)
    for stem, config in CONFIGS.items():
        assert config["name"] == stem


@pytest.mark.parametrize("name", METHODS)
def test_config_builds_the_method_and_names_its_gradient_source(name):
    method = build(name, 3)
    grads = CONFIGS[name].get("grads")
    if method.needs_grads:
        assert grads in ("representation", "parameters")
        assert grads == "parameters" or method.representation_ok
    else:
        assert grads is None  # loss methods take no gradients
    assert re.search(r"(19|20)\d\d", type(method).__doc__ or "") or name in ("equal", "static"), "cite the paper"


@pytest.mark.parametrize("name", METHODS)
def test_combine_shapes_and_finite_on_conflicting_gradients(name):
    torch.manual_seed(0)
    grads = torch.randn(3, 10)
    grads[2] = -grads[0] + 0.1 * torch.randn(10)  # a conflicting pair
    losses = torch.tensor([0.7, 1.3, 2.0])
    options = {k: v for k, v in CONFIGS[name].items() if k not in ("name", "grads")}
    combined, weights = combine(name, grads, losses, **options)
    assert combined.shape == (10,) and weights.shape == (3,)
    assert torch.isfinite(combined).all() and torch.isfinite(weights).all()


@pytest.mark.parametrize("name", METHODS)
def test_a_subset_of_tasks_is_combined_over_its_own_rows(name):
    torch.manual_seed(0)
    method = build(name, 4)
    tasks = torch.tensor([0, 2])
    for _ in range(3):  # stateful methods go through a few steps
        grads, losses = torch.randn(2, 6), torch.rand(2) + 0.5
        combined, weights = method.combine(grads, losses, tasks) if method.needs_grads else (None, method.weights(losses, tasks))
        assert weights.shape == (2,) and torch.isfinite(weights).all()
        if combined is not None:
            assert combined.shape == (6,) and torch.isfinite(combined).all()


def test_unknown_method_and_option_are_clear_errors():
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; choose one of .*equal"):
        create("nope", 2)
    with pytest.raises(ConfigError, match=r"weighting=equal: .*unexpected keyword argument 'alpha'"):
        create("equal", 2, alpha=1.0)


def test_combine_checks_its_input():
    with pytest.raises(ValueError, match=r"\[tasks, dim\]"):
        combine("equal", torch.ones(3))
    assert _REGISTRY["equal"] is type(create("equal", 1))


def test_equal_and_static():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    torch.testing.assert_close(combine("equal", g)[0], torch.tensor([4.0, 1.0]))
    combined, weights = combine("static", g, weights=[0.5, 2.0])
    torch.testing.assert_close(combined, torch.tensor([6.5, -1.0]))
    torch.testing.assert_close(weights, torch.tensor([0.5, 2.0]))
