"""Theory: the proposition, the alpha-aware prediction, the four routes, R^2.

Known answers come from the schedules themselves and from the Gaussian mixture.
"""

import math

import numpy as np
import pytest
import torch

from noiseshift.analysis import theory as th
from noiseshift.data import Dataset, GaussianMixture
from noiseshift.runtime import generator
from noiseshift.schedules import SCHEDULES, get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = sorted(SCHEDULES)
T = np.linspace(0.2, 0.8, 13)


@pytest.fixture(params=ALL)
def schedule(request):
    return get_schedule(request.param)


def small_variance_mixture(dim=64, seed=0):
    """Modes close together (m2 ~ 0.05): the noise level is read from the state's spread."""
    g = torch.Generator().manual_seed(seed)
    mix = GaussianMixture(0.1 * torch.randn(8, dim, generator=g, dtype=torch.float64), 0.2)
    x, k = mix.sample(4096, g)
    return Dataset(x=x, labels=k, num_classes=8, mixture=mix, spec={"name": "gmm-small"})


# -- the proposition ---------------------------------------------------------------------------

def test_first_order_agrees_with_exact_inversion_for_small_sigma_e(schedule):
    se = 0.01 * schedule.sigma(T)
    err = np.abs(th.delta_first_order(T, se, schedule) - th.delta_exact(T, se, schedule))
    err_half = np.abs(th.delta_first_order(T, se / 2, schedule)
                      - th.delta_exact(T, se / 2, schedule))
    exact = th.delta_exact(T, se, schedule)
    assert np.all(exact > 0) and np.all(T + exact < 1)
    # The two differ only through sigma's curvature: O(d_sigma^2) = O(sigma_e^4).
    # Close where sigma is far from saturating (not VP-linear's late t, where sigma' -> 0).
    assert np.all(err <= 0.05 * exact + 1e-15)
    assert np.all(err_half <= 0.3 * err + 1e-15)


def test_first_order_is_exact_for_linear_sigma():
    se = np.full_like(T, 0.3)
    assert np.allclose(th.delta_first_order(T, se, "linear"), th.delta_exact(T, se, "linear"))
    assert th.delta_first_order(0.5, 0.0, "linear") == 0.0


def test_exact_inversion_is_exact(schedule):
    se = 0.3 * schedule.sigma(T)
    te = th.t_exact(T, se, schedule)
    target = schedule.sigma(T) ** 2 + se**2
    inside = target < schedule.sigma(1.0) ** 2  # beyond sigma's range it clips to t = 1
    assert inside.sum() >= 6 and np.allclose(te[~inside], 1.0)
    assert np.all(te[inside] > T[inside])
    assert np.allclose(schedule.sigma(te[inside]) ** 2, target[inside], rtol=1e-9)


def test_theory_accepts_torch():
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    out = th.delta_exact(t, torch.tensor(0.1), "vp-cosine")
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert np.allclose(out, th.delta_exact(t.numpy(), 0.1, "vp-cosine"))


# -- second-moment matching --------------------------------------------------------------------

@pytest.mark.parametrize("m2", [0.05, 0.7, 2.5])
def test_second_moment_match_recovers_t(schedule, m2):
    if schedule.name.startswith("vp") and m2 == 1.0:
        pytest.skip("flat moment")
    tt = np.linspace(0.05, 0.95, 91)
    edges = schedule.moment_branches(m2)
    keep = np.min(np.abs(tt[:, None] - edges[None, 1:-1]), axis=1, initial=1.0) > 0.02
    m = schedule.second_moment(tt, m2)
    back = schedule.t_from_second_moment(m, m2, t_near=tt)
    assert np.allclose(back[keep], tt[keep], atol=1e-9)


def test_linear_moment_has_a_minimum_at_m2_over_1_plus_m2():
    edges = get_schedule("linear").moment_branches(0.7)
    assert len(edges) == 3 and edges[1] == pytest.approx(0.7 / 1.7, abs=1e-9)
    assert len(get_schedule("vp-cosine").moment_branches(0.7)) == 2
    assert len(get_schedule("ve").moment_branches(0.7)) == 2


def test_second_moment_match_on_true_states_reads_zero_shift():
    data = small_variance_mixture()
    sch, gen = get_schedule("vp-cosine"), generator(0)
    for t in (0.3, 0.5, 0.7):
        x0 = data.x[torch.randint(len(data), (2048,), generator=gen)]
        xt = sch.alpha(t) * x0 + sch.sigma(t) * torch.randn(x0.shape, generator=gen)
        assert abs(th.route_b(xt, t, sch, data.mixture.second_moment())) < 0.01


def test_second_moment_reads_extra_noise_as_cleaner_below_the_minimum():
    """Under the linear schedule with image-like m2, extra noise below t* = m2/(1+m2) raises
    the second moment, which the alpha-aware match reads as *smaller* t."""
    m2, se = 0.7, 0.05
    for t, sign in ((0.2, -1), (0.7, 1)):
        m = get_schedule("linear").second_moment(t, m2) + se**2
        assert np.sign(th.delta_second_moment(t, m, m2, "linear")) == sign
        assert th.delta_exact(t, se, "linear") > 0


def test_beyond_the_branch_maps_to_its_end():
    # Below the minimum of the linear moment there is no root: the answer is t*.
    m2 = 0.7
    t_star = m2 / (1 + m2)
    linear = get_schedule("linear")
    low = linear.second_moment(t_star, m2) - 0.1
    assert linear.t_from_second_moment(low, m2, t_near=0.2) == pytest.approx(t_star)
    assert linear.t_from_second_moment(low, m2, t_near=0.8) == pytest.approx(t_star)


# -- deviations --------------------------------------------------------------------------------

def test_decomposition_is_orthogonal_and_complete():
    gen = generator(1)
    mix = GaussianMixture.random(32, 4, 0.25, 0)
    x_ref = torch.randn(50, 32, generator=gen)
    x_hat = x_ref + 0.3 * torch.randn(50, 32, generator=gen)
    basis = th.mean_span(mix)
    assert basis.shape == (32, 4)
    dev = th.decompose_deviation(x_hat, x_ref, basis)
    e = (x_hat - x_ref).double()
    assert torch.allclose(dev.radial + dev.mean + dev.orth, e, atol=1e-12)
    for a, b in ((dev.radial, dev.mean), (dev.radial, dev.orth), (dev.mean, dev.orth)):
        assert (a * b).sum(1).abs().max() < 1e-10
    assert (dev.orth @ basis).abs().max() < 1e-10
    assert dev.orth_dim == 32 - 4 - 1


def test_route_d_ignores_radial_and_mean_span_error():
    mix = GaussianMixture.random(64, 8, 0.25, 0)
    x, _ = mix.sample(256, generator(0))
    basis, t, sch = th.mean_span(mix), 0.5, get_schedule("linear")
    radial = x * 1.1
    in_span = x + 0.3 * (mix.means[0] / mix.means[0].norm()).float()
    assert th.route_d(radial, x, t, sch, basis) == pytest.approx(0.0, abs=1e-6)
    assert th.route_d(in_span, x, t, sch, basis) == pytest.approx(0.0, abs=1e-6)
    assert th.route_a(radial, x, t, sch) > 0.005  # the paper's formula counts it as noise


def test_predict_routes_without_reference_gives_only_b():
    mix = GaussianMixture.random(8, 2, 0.25, 0)
    x, _ = mix.sample(64, generator(0))
    states = torch.stack([x, x])
    df = th.predict_routes(states, [0.5, 0.4], "linear", m2=mix.second_moment())
    assert list(df.t) == [0.5, 0.4] and df.a.isna().all() and df.b.notna().all()


def test_r2_score():
    assert th.r2_score([1, 2, 3], [1, 2, 3]) == 1.0
    assert th.r2_score([1, 2, 3], [2, 2, 2]) == 0.0
    assert th.r2_score([1, 2, 3], [3, 2, 1]) < 0
    assert math.isnan(th.r2_score([1.0], [1.0]))
