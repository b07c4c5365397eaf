"""MGDA, CAGrad, IMTL-G, Nash-MTL, FairGrad, MoCo, MoDo and SDMGrad against their papers'
definitions, on small hand-made and random cases."""


import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import minimize

from mhc.config import config_dir
from mhc.weighting import combine, create
from mhc.weighting.base import all_tasks
from mhc.weighting.min_norm import gram_matrix, min_norm_weights, project_simplex

METHODS = ["mgda", "cagrad", "imtl", "nash_mtl", "fairgrad", "moco", "modo", "sdmgrad"]
STATEFUL = ["nash_mtl", "moco", "modo", "sdmgrad"]
CONF = config_dir() / "weighting"


def simplex_grid(step: int = 1000) -> np.ndarray:
    """Every point of the 3-task simplex on a grid of spacing 1/step, [N, 3]."""
    i, j = np.meshgrid(np.arange(step + 1), np.arange(step + 1), indexing="ij")
    keep = i + j <= step
    a, b = i[keep] / step, j[keep] / step
    return np.stack([a, b, 1.0 - a - b], axis=1)


def random_grads(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(method, grads, tasks=None, losses=None):
    tasks = all_tasks(len(grads)) if tasks is None else torch.tensor(tasks)
    losses = torch.ones(len(grads), dtype=grads.dtype) if losses is None else losses
    with torch.no_grad():
        return method.combine(grads, losses, tasks)


# -- shared helpers ----------------------------------------------------------------------------
def test_project_simplex_hand_cases():
    cases = {(0.5, 0.5, 0.5): (1 / 3, 1 / 3, 1 / 3), (2.0, 0.0, 0.0): (1.0, 0.0, 0.0),
             (0.6, 0.6, -1.0): (0.5, 0.5, 0.0), (0.2, 0.3, 0.5): (0.2, 0.3, 0.5)}
    for v, expected in cases.items():
        assert torch.allclose(project_simplex(torch.tensor(v, dtype=torch.float64)),
                              torch.tensor(expected, dtype=torch.float64))


def test_project_simplex_is_the_nearest_simplex_point():
    v = torch.tensor([0.9, -0.4, 0.7], dtype=torch.float64)
    p = project_simplex(v).numpy()
    grid = simplex_grid(200)
    assert p.min() >= 0 and abs(p.sum() - 1) < 1e-12
    assert np.sum((p - v.numpy()) ** 2) <= np.min(np.sum((grid - v.numpy()) ** 2, axis=1)) + 1e-12


@pytest.mark.parametrize("k,d,seed", [(8, 5, 0), (8, 20, 1), (6, 3, 2)])
def test_min_norm_solver_beats_a_generic_qp_solver(k, d, seed):
    gram = gram_matrix(random_grads(k, d, seed) + 0.3)
    w = min_norm_weights(gram)
    reference = minimize(lambda x: x @ gram @ x, np.full(k, 1 / k), jac=lambda x: 2 * gram @ x, method="SLSQP",
                         bounds=[(0, 1)] * k, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                         options={"ftol": 1e-15, "maxiter": 1000}).x
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    assert w @ gram @ w <= reference @ gram @ reference + 1e-9


# -- MGDA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,offset", [(0, 0.0), (1, 0.5), (2, 1.5), (3, -0.2)])
def test_mgda_matches_brute_force_over_the_simplex(seed, offset):
    grads = random_grads(3, 4, seed) + offset  # offsets move the optimum between interior, edges, corners
    combined, w = combine("mgda", grads)
    gram = gram_matrix(grads)
    grid = simplex_grid()
    values = np.einsum("ni,ij,nj->n", grid, gram, grid)
    best = int(np.argmin(values))
    assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-9
    assert float(combined @ combined) <= values[best] + 1e-9
    assert float(combined @ combined) >= values[best] - 1e-3
    assert np.abs(w.numpy() - grid[best]).max() < 1e-2


def test_mgda_hand_case_and_normalisations():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    _, w = combine("mgda", grads)  # min_w w^2 + 4 (1 - w)^2 at w = 4/5
    assert torch.allclose(w, torch.tensor([0.8, 0.2]))
    # l2: weights are those of the unit gradients, applied to the raw gradients
    combined, w = combine("mgda", grads, normalization="l2")
    assert torch.allclose(w, torch.tensor([0.5, 0.5])) and torch.allclose(combined, torch.tensor([0.5, 1.0]))
    # loss: gradients divided by their losses, L = (1, 2) makes both unit vectors
    _, w = combine("mgda", grads, torch.tensor([1.0, 2.0]), normalization="loss")
    assert torch.allclose(w, torch.tensor([0.5, 0.5]))
    _, w = combine("mgda", grads, torch.tensor([1.0, 0.5]), normalization="loss+")  # n = (1, 1)
    assert torch.allclose(w, torch.tensor([0.8, 0.2]))
    with pytest.raises(ValueError, match="losses"):
        combine("mgda", grads, normalization="loss")


def test_mgda_is_zero_when_the_hull_contains_the_origin():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    combined, w = combine("mgda", grads)
    assert combined.norm() < 1e-6 and torch.allclose(w, torch.tensor([0.5, 0.25, 0.25]), atol=1e-6)


# -- CAGrad ------------------------------------------------------------------------------------
def test_cagrad_with_c_zero_is_the_mean_gradient():
    grads = random_grads(4, 9, 5).float()
    combined, w = combine("cagrad", grads, c=0.0)
    assert torch.allclose(combined, grads.mean(0), atol=1e-6, rtol=0)
    assert torch.allclose(w, torch.full((4,), 0.25))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c", [0.4, 1.0])
def test_cagrad_maximises_the_worst_improvement_in_the_ball(seed, c):
    grads = random_grads(3, 5, seed) + 0.3
    g0 = grads.mean(0)
    d, w = combine("cagrad", grads, c=c, rescale=0)
    assert torch.allclose(d, w @ grads)
    assert (d - g0).norm() <= c * g0.norm() * (1 + 1e-9)
    worst = float((grads @ d).min())
    assert worst >= float((grads @ g0).min())
    # duality: max over the ball of min_i <g_i, d> = min over the simplex of <g_w, g0> + c ||g0|| ||g_w||
    gram, grid = gram_matrix(grads), simplex_grid()
    dual = grid @ gram.mean(axis=1) + c * float(g0.norm()) * np.sqrt(np.einsum("ni,ij,nj->n", grid, gram, grid))
    assert abs(worst - dual.min()) < 1e-3 * max(1.0, abs(dual.min()))
    assert worst <= dual.min() + 1e-9
    for rescale, divisor in ((1, 1 + c**2), (2, 1 + c)):
        scaled, _ = combine("cagrad", grads, c=c, rescale=rescale)
        assert torch.allclose(scaled, d / divisor)


# -- IMTL-G ------------------------------------------------------------------------------------
def test_imtl_hand_case():
    _, w = combine("imtl", torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # (a, 2 (1 - a)) . u: a = 2 (1 - a)
    assert torch.allclose(w, torch.tensor([2 / 3, 1 / 3]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_imtl_projections_on_unit_gradients_are_equal(seed):
    grads = random_grads(3, 6, seed) * torch.tensor([[1.0], [5.0], [0.2]], dtype=torch.float64)
    combined, w = combine("imtl", grads)
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ combined
    assert torch.allclose(projections, projections[0].expand(3), rtol=1e-9, atol=1e-12)
    assert abs(float(w.sum()) - 1) < 1e-9


# -- Nash-MTL and FairGrad ---------------------------------------------------------------------
def test_nash_mtl_hand_case():
    _, alpha = combine("nash_mtl", torch.tensor([[1.0, 0.0], [0.0, 2.0]]), normalize=False, max_norm=0.0)
    assert torch.allclose(alpha, torch.tensor([1.0, 0.5]))  # G = diag(1, 4): G_ii alpha_i^2 = 1


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 3), (2, 5)])
def test_nash_mtl_bargaining_condition(seed, k):
    grads = random_grads(k, 8, seed) * torch.linspace(0.1, 3.0, k, dtype=torch.float64)[:, None]
    gram = torch.from_numpy(gram_matrix(grads))
    _, alpha = combine("nash_mtl", grads, normalize=False, max_norm=0.0)
    assert (alpha > 0).all()
    assert torch.allclose((gram @ alpha) * alpha, torch.ones(k, dtype=torch.float64), atol=1e-8)
    _, alpha = combine("nash_mtl", grads, max_norm=0.0)  # normalize: the same on G / ||G||_F
    assert torch.allclose((gram / gram.norm() @ alpha) * alpha, torch.ones(k, dtype=torch.float64), atol=1e-8)


def test_nash_mtl_clips_to_max_norm_and_reuses_weights():
    grads = random_grads(3, 6, 4) * 10
    combined, alpha = combine("nash_mtl", grads, max_norm=0.5)
    assert abs(float(combined.norm()) - 0.5) < 1e-9 and torch.allclose(combined, alpha @ grads)
    grads = grads.float()
    method = create("nash_mtl", 3, update_weights_every=3, max_norm=0.0, normalize=False)
    first = run(method, grads)[1]
    assert torch.equal(run(method, grads * 2)[1], first)  # steps 1, 2 reuse the weights
    assert torch.equal(run(method, grads * 3)[1], first)
    assert torch.allclose(run(method, grads * 2)[1], first / 2)  # step 3 solves again: alpha ~ 1 / scale
    subset = run(method, grads[:2], tasks=[0, 1])[1]  # another task set solves again
    assert not torch.allclose(subset, first[:2] / 2)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_fairness_condition(alpha):
    grads = random_grads(4, 7, 6) * torch.tensor([[0.5], [1.0], [2.0], [4.0]], dtype=torch.float64)
    gram = torch.from_numpy(gram_matrix(grads))
    combined, w = combine("fairgrad", grads, alpha=alpha)
    assert (w > 0).all() and torch.allclose(combined, w @ grads)
    assert torch.allclose(gram @ w, w ** (-1 / alpha), rtol=1e-8)


def test_fairgrad_hand_case_and_nash_equivalence():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    _, w = combine("fairgrad", grads, alpha=2.0)  # G_ii w_i = w_i^(-1/2): w_i = G_ii^(-2/3)
    assert torch.allclose(w, torch.tensor([1.0, 4 ** (-2 / 3)], dtype=torch.float64))
    grads = random_grads(3, 5, 7)
    _, fair = combine("fairgrad", grads, alpha=1.0)
    _, nash = combine("nash_mtl", grads, normalize=False, max_norm=0.0)
    assert torch.allclose(fair, nash)


# -- MoCo, MoDo, SDMGrad -----------------------------------------------------------------------
def test_moco_two_steps_by_hand():
    g1, g2 = random_grads(3, 4, 8), random_grads(3, 4, 9)
    beta, gamma, rho = 0.5, 0.1, 0.2
    method = create("moco", 3, beta=beta, gamma=gamma, rho=rho)
    lam = torch.full((3,), 1 / 3, dtype=torch.float64)
    y = g1  # a task's estimate starts at its first gradient
    lam = project_simplex(lam - gamma * (y @ y.T @ lam + rho * lam))
    combined, w = run(method, g1)
    assert torch.allclose(w, lam) and torch.allclose(combined, lam @ y)
    y = y - beta / 2**0.5 * (y - g2)
    lam = project_simplex(lam - gamma / 2**0.5 * (y @ y.T @ lam + rho * lam))
    combined, w = run(method, g2)
    assert torch.allclose(w, lam) and torch.allclose(combined, lam @ y)
    assert not create("moco", 3).representation_ok


def test_modo_step_by_hand_and_fixed_point_is_mgda():
    grads = random_grads(3, 5, 10)
    gram = grads @ grads.T
    method = create("modo", 3, gamma=0.05, rho=0.1)
    lam = torch.full((3,), 1 / 3, dtype=torch.float64)
    lam = project_simplex(lam - 0.05 * (gram @ lam + 0.1 * lam))
    combined, w = run(method, grads)
    assert torch.allclose(w, lam) and torch.allclose(combined, lam @ grads)
    method = create("modo", 3, gamma=1 / float(torch.linalg.eigvalsh(gram).max()), rho=0.0)
    for _ in range(400):
        _, w = run(method, grads)
    assert np.abs(w.numpy() - min_norm_weights(gram.numpy())).max() < 1e-4


@pytest.mark.parametrize("lmbda", [0.0, 0.3, 2.0])
def test_sdmgrad_converges_to_the_regularised_min_norm_point(lmbda):
    grads = random_grads(3, 6, 11) + 0.4
    combined, w = combine("sdmgrad", grads, lmbda=lmbda, niter=3000)
    # ||g_w + lmbda g0|| is the min norm of the convex hull of the shifted gradients g_i + lmbda g0
    inner = min_norm_weights(gram_matrix(grads + lmbda * grads.mean(0)))
    expected = (torch.from_numpy(inner) + lmbda / 3) / (1 + lmbda)
    assert torch.allclose(w, expected, atol=1e-5)
    assert torch.allclose(combined, w @ grads) and abs(float(w.sum()) - 1) < 1e-9


# -- every method ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_combine_shapes_finite_and_linear(name):
    grads = random_grads(4, 12, 12).float()
    for g in (grads, torch.cat([grads[:3], torch.zeros(1, 12)]), torch.zeros(4, 12), grads[:1]):
        combined, w = combine(name, g, torch.rand(len(g)) + 0.5)
        assert combined.shape == (12,) and w.shape == (len(g),)
        assert torch.isfinite(combined).all() and torch.isfinite(w).all()
        if name != "moco":
            assert torch.allclose(combined, w @ g, atol=1e-6)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_continues_identically(name):
    steps = [random_grads(3, 10, s).float() for s in range(20, 25)]
    options = {"update_weights_every": 2} if name == "nash_mtl" else {}
    first = create(name, 3, **options)
    for g in steps[:3]:
        run(first, g)
    second = create(name, 3, **options)
    second.load_state_dict(first.state_dict())
    for g in steps[3:]:
        a, b = run(first, g), run(second, g)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", METHODS)
def test_subset_of_tasks_leaves_absent_state_alone(name):
    method = create(name, 4)
    run(method, random_grads(4, 10, 30).float())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    combined, w = run(method, random_grads(3, 10, 31).float(), tasks=[0, 2, 3])
    assert combined.shape == (10,) and w.shape == (3,) and torch.isfinite(combined).all()
    for key, value in method.state_dict().items():
        if value.ndim >= 1 and value.shape[0] == 4 and key != "solved_for":  # the task set of the last solve
            assert torch.equal(value[1], before[key][1]), key
            if value.dtype.is_floating_point:
                assert not torch.equal(value[[0, 2, 3]], before[key][[0, 2, 3]]), key


@pytest.mark.parametrize("name", METHODS)
def test_config_file_matches_the_constructor(name):
    conf = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert conf.pop("name") == name
    method = create(name, 2)
    assert conf.pop("grads") == ("representation" if method.representation_ok else "parameters")
    create(name, 2, **conf)
    import inspect

    defaults = inspect.signature(type(method).__init__).parameters
    for key, value in conf.items():
        assert defaults[key].default == value, key
