"""The capped, calibrated NAG modes (cf-calibrated, its control, estimator-reading) against
the exact Gaussian mixture: known answers, directions, the cap near t = 1."""

import math

import pytest
import torch

from noiseshift.data import MixtureDenoiser, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.estimators import ExactOracle
from noiseshift.guidance import (
    DEFAULT_CAP,
    ClassifierFreeGuidance,
    ReadingLikelihoodNAG,
    ReadingStepNAG,
    build_guidance,
    calibrated_t,
    capped,
    reading_and_grad,
    run_name,
    velocity_gain,
)
from noiseshift.sampling import sample
from noiseshift.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

LIN = get_schedule("linear")


@pytest.fixture(scope="module")
def gmm():
    """A 64-d mixture (where the exact posterior of t is sharp), its exact denoiser and the
    exact oracle, calibrated like every estimator."""
    data = make_gmm(dim=64, components=8, std=0.25, seed=0, n=2048)
    oracle = ExactOracle(calib_samples=64, calib_points=25).fit(data, "linear")
    return data.mixture, MixtureDenoiser(data.mixture, LIN), oracle


def _states(mix, t, shift=0.0, n=32, seed=0):
    """True states at level t + shift (scheduled t), float64."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mix.sample(n, g)
    eps = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    level = torch.full((n,), t + shift, dtype=torch.float64)
    return LIN.add_noise(x0.double(), eps, level), torch.full((n,), t, dtype=torch.float64)


class Stub:
    """A reader with a chosen reading and reference curve (and an identity calibration)."""

    def __init__(self, reading, reference):
        self.reading, self.ref = reading, reference

    def predict(self, x):
        return self.reading.expand(x.shape[0]), torch.zeros(x.shape[0])

    def reference(self, t):
        return self.ref(t)


# -- the pieces ---------------------------------------------------------------------------------

def test_velocity_gain_is_t_over_1_minus_t_and_the_cap_bounds_it():
    t = torch.tensor([0.1, 0.5, 0.8, 0.9, 0.95], dtype=torch.float64)
    assert torch.allclose(velocity_gain(LIN, t), t / (1 - t), rtol=1e-12)
    factor = capped(LIN, t, 4.0)
    assert torch.allclose(factor[:3], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(velocity_gain(LIN, t) * factor, torch.clamp(t / (1 - t), max=4.0))
    assert torch.equal(capped(LIN, t, None), torch.ones(5, dtype=torch.float64))


def test_calibrated_t_inverts_the_reference_curve():
    # True states at t read 0.5 + 0.4 t on average: a reading of 0.7 means t-hat = 0.5.
    est = Stub(torch.tensor([0.7], dtype=torch.float64), lambda t: 0.5 + 0.4 * t)
    x = torch.zeros(3, 4)
    assert torch.allclose(calibrated_t(est, x), torch.full((3,), 0.5, dtype=torch.float64),
                          atol=1e-6)


def test_calibrated_t_removes_the_readings_bias_near_the_ends(gmm):
    mix, _, oracle = gmm
    for t in (0.02, 0.98):
        x, _ = _states(mix, t, n=256)
        read = oracle.predict(x.float())[0].mean()
        cal = calibrated_t(oracle, x.float()).mean()
        assert abs(float(cal) - t) < abs(float(read) - t)


def test_reading_gradient_is_the_posterior_means_gradient(gmm):
    """With an identity calibration, grad r is the posterior mean's gradient: compare with
    central differences along a random direction."""
    mix, _, oracle = gmm

    class Identity:
        def log_posterior(self, x):
            return oracle.log_posterior(x)

        def calibrate(self, raw):
            return raw

    x, _ = _states(mix, 0.4, n=4)
    x = x.float()
    r, grad = reading_and_grad(Identity(), x)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    h = 1e-2
    rp = Identity().log_posterior(x + h * u)
    rm = Identity().log_posterior(x - h * u)
    fd = ((rp[1].exp() @ rp[0]) - (rm[1].exp() @ rm[0])) / (2 * h)
    assert torch.allclose((grad * u).sum(1), fd.double(), rtol=0.05, atol=1e-4)


# -- known answers -------------------------------------------------------------------------------

@pytest.mark.parametrize("control", [False, True])
def test_cf_calibrated_is_the_capped_score_difference_at_t_hat(gmm, control):
    mix, model, oracle = gmm
    w = 0.7
    for t in (0.3, 0.9):
        x, tt = _states(mix, t, shift=0.05, n=8)
        x = x.float()
        g = ClassifierFreeGuidance(model, nag_scale=w, nag_interval=(0, 1), read=oracle,
                                   calibrated=True, control=control, cap=DEFAULT_CAP)
        t_hat = calibrated_t(oracle, x)
        branch = model(x, tt) if control else model(x, tt, drop_t=torch.ones(8, dtype=bool))
        s_c = LIN.convert(model(x, tt).double(), "velocity", "score", x.double(), tt)
        s_u = LIN.convert(branch.double(), "velocity", "score", x.double(), t_hat)
        factor = min(t / (1 - t), DEFAULT_CAP)
        expect = model(x, tt).double() - w * factor * (s_c - s_u)
        assert torch.allclose(g(x, tt).double(), expect, rtol=1e-4, atol=1e-4)


def test_estimator_reading_is_the_gradient_of_the_readings_likelihood(gmm):
    mix, model, oracle = gmm
    w, t = 0.5, 0.4
    x, tt = _states(mix, t, shift=0.05, n=8)
    x = x.float()
    got = ReadingLikelihoodNAG(model, oracle, scale=w, interval=(0, 1), cap=4.0)(x, tt)
    r, grad = reading_and_grad(oracle, x)
    ref = oracle.reference(tt)
    g = (-(r - ref) / (0.05 * t) ** 2)[:, None] * grad
    expect = model(x, tt).double() - w * t / (1 - t) * g
    assert torch.allclose(got.double(), expect, rtol=1e-4, atol=1e-4)


def test_estimator_step_moves_the_denoised_estimate_along_the_noise(gmm):
    """x0 moves by w / (1 + w) of the Newton step c e, with e the unit predicted noise and
    c = -(r - r_ref) / (grad r . e)."""
    mix, model, oracle = gmm
    t = 0.3
    x, tt = _states(mix, t, shift=0.06, n=8)
    x = x.float()
    out = model(x, tt).double()
    eps = LIN.convert(out, "velocity", "eps", x.double(), tt)
    e = eps / eps.norm(dim=1, keepdim=True)
    r, grad = reading_and_grad(oracle, x)
    slope = (grad * e).sum(1)
    assert (slope > 0.1 * grad.norm(dim=1)).all()  # no row skipped
    c = -(r - oracle.reference(tt)) / slope
    assert c.mean() < 0  # noisier than scheduled: noise comes off
    c = c.clamp(-t * eps.norm(dim=1), t * eps.norm(dim=1))
    x0 = LIN.convert(out, "velocity", "x0", x.double(), tt)
    for w in (1.0, 1.5):
        got = ReadingStepNAG(model, oracle, scale=w)(x, tt).double()
        x0_got = LIN.convert(got, "velocity", "x0", x.double(), tt)
        assert torch.allclose(x0_got, x0 + w / (1 + w) * c[:, None] * e, rtol=1e-4, atol=1e-4)


def test_estimator_step_scale_is_the_odds_of_the_share_removed(gmm):
    mix, model, oracle = gmm
    x, tt = _states(mix, 0.4, shift=0.05, n=8)
    x = x.float()
    base = model(x, tt).double()
    half = ReadingStepNAG(model, oracle, scale=1.0)(x, tt).double() - base
    full = ReadingStepNAG(model, oracle, scale=1e9)(x, tt).double() - base
    assert torch.allclose(full, 2 * half, rtol=1e-5, atol=1e-6)
    with pytest.raises(NoiseshiftError, match="scale >= 0"):
        ReadingStepNAG(model, oracle, scale=-0.5)


# -- direction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["cf-calibrated", "cf-calibrated-control",
                                  "estimator-reading", "estimator-step"])
def test_the_correction_pulls_the_reading_back_toward_the_schedule(gmm, mode):
    """A state noisier than scheduled is made less noisy by one guided step than by an
    unguided one; a cleaner state is made noisier."""
    mix, model, oracle = gmm
    guided, _ = build_guidance(model, nag_scale=0.5, nag_mode=mode, estimator=oracle)
    t, h = 0.5, 1 / 16
    for shift, sign in ((0.08, -1.0), (-0.08, 1.0)):
        x, tt = _states(mix, t, shift=shift, n=64)
        x = x.float()
        step_g = x - h * guided(x, tt).float()
        step_u = x - h * model(x, tt).float()
        moved = oracle.predict(step_g)[0].mean() - oracle.predict(step_u)[0].mean()
        assert sign * float(moved) > 0.002


# -- the cap and the ends ----------------------------------------------------------------------

def test_the_cap_scales_the_change_near_t_1_and_nowhere_else(gmm):
    mix, model, oracle = gmm
    for t, ratio in ((0.5, 1.0), (0.95, DEFAULT_CAP / 19.0)):
        x, tt = _states(mix, t, shift=0.03, n=8)
        x = x.float()
        base = model(x, tt).double()
        change = {}
        for cap in (DEFAULT_CAP, math.inf):
            g, _ = build_guidance(model, nag_scale=1.0, nag_mode="cf-calibrated",
                                  estimator=oracle, cap=cap)
            change[cap] = g(x, tt).double() - base
        assert torch.allclose(change[DEFAULT_CAP], ratio * change[math.inf], rtol=1e-4,
                              atol=1e-5)


@pytest.mark.parametrize("mode", ["cf-calibrated", "cf-calibrated-control",
                                  "estimator-reading", "estimator-step"])
def test_zero_scale_is_unguided_bit_for_bit_and_guidance_stays_finite(gmm, mode):
    mix, model, oracle = gmm
    ref = sample(model, 16, steps=4, seed=3)
    g0, d0 = build_guidance(model, nag_scale=0.0, nag_mode=mode, estimator=oracle)
    assert g0 is model and d0 == {"kind": "none"}
    cls = {"estimator-reading": ReadingLikelihoodNAG, "estimator-step": ReadingStepNAG}.get(mode)
    if cls is not None:
        assert torch.equal(sample(cls(model, oracle, scale=0.0), 16, steps=4, seed=3), ref)
    else:
        zero = ClassifierFreeGuidance(model, nag_scale=0.0, read=oracle, calibrated=True,
                                      cap=4.0)
        assert torch.equal(sample(zero, 16, steps=4, seed=3), ref)
    guided, _ = build_guidance(model, nag_scale=1.0, nag_mode=mode, estimator=oracle)
    assert torch.isfinite(sample(guided, 16, steps=8, seed=3)).all()


def test_names_intervals_and_caps_in_the_description(gmm):
    _, model, oracle = gmm
    _, d = build_guidance(model, nag_scale=1.5, nag_mode="cf-calibrated", estimator=oracle)
    assert d["kind"] == "nag-cf-calibrated-1.5"
    assert d["nag"]["interval"] == [0.0, 1.0] and d["nag"]["cap"] == DEFAULT_CAP
    _, d = build_guidance(model, nag_scale=1, nag_mode="estimator-reading", estimator=oracle,
                          interval=(0, 0.8), cap=math.inf)
    assert run_name(d) == "nag-estimator-reading-1@0-0.8" and "cap" not in d["nag"]
    _, d = build_guidance(model, nag_scale=1, nag_mode="cf-read", estimator=oracle)
    assert d["nag"]["interval"] == [0.0, 0.8] and "cap" not in d["nag"]
    _, d = build_guidance(model, nag_scale=1.5, estimator=oracle)  # the default mode
    assert d["kind"] == "nag-estimator-step-1.5" and d["nag"]["interval"] == [0.0, 1.0]
