import math

import numpy as np
import pytest
import torch

from noiseshift.errors import NoiseshiftError
from noiseshift.schedules import PARAMETRISATIONS, SCHEDULES, get_schedule

ALL = sorted(SCHEDULES)
T = np.linspace(0.02, 0.98, 97)


@pytest.fixture(params=ALL)
def schedule(request):
    return get_schedule(request.param)


def test_known_values():
    lin, cos = get_schedule("linear"), get_schedule("vp-cosine")
    assert lin.alpha(0.25) == pytest.approx(0.75) and lin.sigma(0.25) == pytest.approx(0.25)
    assert cos.alpha(0.5) == pytest.approx(math.sqrt(0.5))
    assert lin.log_snr(0.5) == pytest.approx(0.0, abs=1e-12)
    ve = get_schedule({"name": "ve", "sigma_min": 0.01, "sigma_max": 100.0})
    assert ve.sigma(0.5) == pytest.approx(1.0) and ve.alpha(0.3) == 1.0
    ddpm = get_schedule("vp-linear")
    # int_0^1 beta = 0.1 + 19.9 / 2
    assert ddpm.alpha(1.0) == pytest.approx(math.exp(-0.5 * (0.1 + 9.95)))


def test_vp_identity(schedule):
    if schedule.name.startswith("vp"):
        assert np.allclose(schedule.alpha(T) ** 2 + schedule.sigma(T) ** 2, 1.0, atol=1e-6)


def test_log_snr_identity(schedule):
    lam = np.log(schedule.alpha(T) ** 2 / schedule.sigma(T) ** 2)
    assert np.allclose(schedule.log_snr(T), lam, atol=1e-6)


def test_derivatives_match_finite_differences(schedule):
    h = 1e-6
    for f, df in ((schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)):
        fd = (f(T + h) - f(T - h)) / (2 * h)
        assert np.allclose(df(T), fd, rtol=1e-5, atol=1e-6)


def test_inverses_round_trip(schedule):
    assert np.allclose(schedule.t_from_log_snr(schedule.log_snr(T)), T, atol=1e-6)
    assert np.allclose(schedule.t_from_sigma(schedule.sigma(T)), T, atol=1e-6)


def test_t_from_sigma_clips_out_of_range(schedule):
    lo, hi = schedule.t_from_sigma(np.array([-1.0, 1e6]))
    assert 0.0 <= lo <= 1e-6 and 1 - 1e-6 <= hi <= 1.0


def test_numpy_and_torch_agree(schedule):
    tt = torch.tensor(T)
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "log_snr"):
        a = getattr(schedule, name)(T)
        b = getattr(schedule, name)(tt)
        assert isinstance(b, torch.Tensor)
        assert np.allclose(a, b.numpy(), atol=1e-12)


@pytest.mark.parametrize("src", PARAMETRISATIONS)
@pytest.mark.parametrize("dst", PARAMETRISATIONS)
def test_conversions_round_trip(schedule, src, dst):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(T), 5, generator=g, dtype=torch.float64)
    eps = torch.randn(len(T), 5, generator=g, dtype=torch.float64)
    t = torch.tensor(T)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    x = a * x0 + s * eps
    truth = {
        "x0": x0,
        "eps": eps,
        "score": -eps / s,
        "velocity": schedule.d_alpha(t)[:, None] * x0 + schedule.d_sigma(t)[:, None] * eps,
    }
    out = schedule.convert(truth[src], src, dst, x, t)
    assert torch.allclose(out, truth[dst], rtol=1e-6, atol=1e-6)


def test_linear_velocity_is_eps_minus_x0():
    lin = get_schedule("linear")
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4)
    x = (1 - t[:, None]) * x0 + t[:, None] * eps
    v = lin.convert(x0, "x0", "velocity", x, t)
    assert torch.allclose(v, eps - x0, atol=1e-5)


def test_get_schedule_round_trips_and_rejects():
    for name in ALL:
        s = get_schedule(name)
        assert get_schedule(s.to_dict()) == s
    with pytest.raises(NoiseshiftError):
        get_schedule("cosine-ish")
    with pytest.raises(NoiseshiftError):
        get_schedule({"name": "ve", "bogus": 1})
    with pytest.raises(NoiseshiftError):
        get_schedule("linear").convert(torch.zeros(1), "logits", "x0", torch.zeros(1), 0.5)


@pytest.mark.parametrize("name", ["linear", "vp-cosine", "vp-linear"])
def test_t_from_alpha_inverts_alpha(name):
    s = get_schedule(name)
    t = np.linspace(0.01, 0.99, 25)
    np.testing.assert_allclose(s.t_from_alpha(s.alpha(t)), t, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "vp-cosine", "vp-linear", "ve"])
def test_add_noise_is_the_path(name):
    s = get_schedule(name)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    want = (torch.as_tensor(s.alpha(t))[:, None] * x0.double()
            + torch.as_tensor(s.sigma(t))[:, None] * eps.double())
    torch.testing.assert_close(s.add_noise(x0, eps, t).double(), want, rtol=1e-6, atol=1e-6)
    # a scalar t, and the velocity along the path: d/dt x_t = alpha' x0 + sigma' eps
    h = 1e-6
    v = (s.add_noise(x0.double(), eps.double(), 0.5 + h)
         - s.add_noise(x0.double(), eps.double(), 0.5 - h)) / (2 * h)
    want_v = s.from_x0_eps(x0.double(), eps.double(), "velocity", x0.double(), 0.5)
    torch.testing.assert_close(v, want_v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,m2", [("linear", 0.3), ("vp-cosine", 0.3), ("vp-linear", 2.0),
                                     ("ve", 0.5)])
def test_t_from_second_moment_inverts_the_moment(name, m2):
    s = get_schedule(name)
    t = np.linspace(0.4, 0.95, 12)  # on the last monotone branch for every family here
    np.testing.assert_allclose(s.t_from_second_moment(s.second_moment(t, m2), m2), t,
                               atol=1e-7)


def test_linear_moment_branches_split_at_t_star():
    s = get_schedule("linear")
    m2 = 0.3
    edges = s.moment_branches(m2)
    assert len(edges) == 3 and abs(edges[1] - m2 / (1 + m2)) < 1e-6


def test_reverse_drift_for_an_exact_gaussian():
    # data N(0, I) under the linear schedule: x_t ~ N(0, ((1-t)^2 + t^2) I),
    # score = -x / var, v = E[x0' ...]; check drift = v - g^2/2 score with g^2 = 2 sigma.
    s = get_schedule("linear")
    t = 0.4
    var = (1 - t) ** 2 + t**2
    x = torch.randn(6, 4, dtype=torch.float64)
    score = -x / var
    v = s.convert(score, "score", "velocity", x, t)
    drift = s.reverse_drift(score, "score", x, t, diffusion=2.0)
    torch.testing.assert_close(drift, v - 0.5 * (2.0 * t) * score)
    assert float(s.diffusion_g2(t, 2.0)) == pytest.approx(0.8)
