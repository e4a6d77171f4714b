import math

import pytest
import torch

from noiseshift.data import GaussianMixture, MixtureDenoiser, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.models import build_model
from noiseshift.runtime import generator
from noiseshift.sampling import (
    SAMPLERS,
    draw_labels,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sampler_settings,
    timesteps,
)
from noiseshift.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gmm8():
    return make_gmm(dim=8, components=4, std=0.3, seed=3)


def _exact(data, schedule="linear", prediction="velocity"):
    return MixtureDenoiser(data.mixture, get_schedule(schedule), prediction)


def _moments(x):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


def _energy_distance(a, b):
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean()
                 - torch.cdist(b, b).mean())


def test_timesteps():
    ts = timesteps(4)
    assert ts.dtype == torch.float64 and ts.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert timesteps(2, t_max=0.8, t_min=0.2).tolist() == pytest.approx([0.8, 0.5, 0.2])
    with pytest.raises(NoiseshiftError):
        timesteps(0)
    with pytest.raises(NoiseshiftError):
        timesteps(4, t_max=0.2, t_min=0.5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama", "ddim"])
def test_many_steps_reproduce_the_mixture(gmm8, sampler):
    # With the exact denoiser and a fine grid every sampler draws from the data law: the
    # energy distance to fresh data is as small as between two data samples.
    n = 1500
    out = sample(_exact(gmm8), n, sampler=sampler, steps=100 if sampler != "heun" else 40,
                 seed=1)
    ref, ref2 = (gmm8.mixture.sample(n, generator(s))[0] for s in (10, 11))
    noise_floor = _energy_distance(ref, ref2)
    assert _energy_distance(out, ref) < 3 * noise_floor + 0.01
    (m_out, c_out), (m_ref, c_ref) = _moments(out), _moments(ref)
    assert (m_out - m_ref).abs().max() < 0.12
    assert (c_out - c_ref).abs().max() < 0.12


@pytest.mark.parametrize("schedule", ["vp-cosine", "vp-linear", "ve"])
def test_samplers_work_under_every_schedule(gmm8, schedule):
    # Uniform steps in t are coarse for VE (uniform in log sigma), hence many steps.
    ref = gmm8.mixture.sample(2000, generator(7))[0]
    for sampler in ("euler-maruyama", "ddim", "heun"):
        out = sample(_exact(gmm8, schedule), 500, sampler=sampler, steps=300, seed=2)
        assert torch.isfinite(out).all()
        assert (out.double().pow(2).mean() / ref.double().pow(2).mean() - 1).abs() < 0.07


@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_parametrisation_does_not_change_the_ode(gmm8, prediction):
    # The same exact model in another parametrisation gives the same Euler path (all
    # conversions go through Schedule.convert). Eps and score cannot start at alpha = 0.
    a = sample(_exact(gmm8), 64, sampler="euler", steps=8, seed=0, t_max=0.99)
    b = sample(_exact(gmm8, prediction=prediction), 64, sampler="euler", steps=8, seed=0,
               t_max=0.99)
    assert torch.allclose(a, b, atol=1e-4)
    c = sample(_exact(gmm8, prediction=prediction), 64, sampler="euler", steps=8, seed=0)
    assert torch.isfinite(c).all()


def test_heun_is_second_order(gmm8):
    model = _exact(gmm8)
    x = torch.randn(256, 8, generator=generator(0))
    ref = sample_euler(model, x, timesteps(800))

    def err(fn, steps):
        return float((fn(model, x, timesteps(steps), final_denoise=False) - ref).abs().mean())

    e_euler, e_heun = err(sample_euler, 8), err(sample_heun, 8)
    assert e_heun < 0.3 * e_euler
    # Error shrinks about 4x per halving of the step for Heun, 2x for Euler.
    assert err(sample_euler, 16) / e_euler == pytest.approx(0.5, abs=0.15)


def test_ddim_eta0_is_euler_under_the_linear_schedule(gmm8):
    model = _exact(gmm8)
    x = torch.randn(64, 8, generator=generator(0))
    ts = timesteps(10)
    assert torch.allclose(sample_ddim(model, x, ts), sample_euler(model, x, ts), atol=1e-5)


def _true_states(mix, schedule, t, n, seed):
    g = generator(seed)
    x0, _ = mix.sample(n, g)
    return float(schedule.alpha(t)) * x0 + float(schedule.sigma(t)) * torch.randn(
        n, mix.dim, generator=g)


def _shift_by_step(mix, sch, steps, n=256):
    """Exact posterior-mean reading of t for the Euler-Maruyama states minus the same
    reading of true forward-noised states at the same t (so the reading's own bias cancels),
    over steps with t in [0.2, 0.8]."""
    rec = []
    sample(MixtureDenoiser(mix, sch), n, sampler="euler-maruyama", steps=steps, seed=0,
           callback=rec.append)
    out = []
    for info in rec:
        t = info["t"]
        if not 0.2 <= t <= 0.8:
            continue
        grid, post = mix.posterior_t(info["x"], sch)
        g2, post_true = mix.posterior_t(_true_states(mix, sch, t, n, seed=info["i"]), sch)
        out.append(float((post * grid).sum(1).mean() - (post_true * g2).sum(1).mean()))
    return torch.tensor(out)


def test_euler_maruyama_states_are_noisier_than_their_schedule():
    # The claim, with the exact score on a 256-d mixture: at 8-32 steps the states
    # read clearly noisier than scheduled, and the shift is first order in the step size.
    data = make_gmm(dim=256, components=8)
    sch = get_schedule("linear")
    shift = {s: _shift_by_step(data.mixture, sch, s).mean().item() for s in (8, 16, 32)}
    assert shift[8] > 0.04 and shift[16] > 0.02 and shift[32] > 0.008
    assert 1.4 < shift[8] / shift[16] < 2.8 and 1.4 < shift[16] / shift[32] < 2.8


def test_euler_maruyama_second_moment_exceeds_the_schedule():
    data = make_gmm(dim=256, components=8)
    sch, m2 = get_schedule("linear"), data.mixture.second_moment()
    rec = []
    sample(_exact(data), 256, sampler="euler-maruyama", steps=16, seed=0, callback=rec.append)
    ratios = [float(r["x"].pow(2).mean() / sch.second_moment(r["t"], m2)) for r in rec
              if 0.2 <= r["t"] <= 0.8]
    assert min(ratios) > 1.015


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_seed_determinism_and_callback(gmm8, sampler):
    model = _exact(gmm8)
    calls = []
    a = sample(model, 32, sampler=sampler, steps=6, seed=4, callback=calls.append)
    b = sample(model, 32, sampler=sampler, steps=6, seed=4)
    c = sample(model, 32, sampler=sampler, steps=6, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [c["i"] for c in calls] == list(range(6))
    ts = [c["t"] for c in calls]
    assert ts == sorted(ts, reverse=True) and ts[0] == 1.0 and len(set(ts)) == 6
    assert all(c["x"].shape == (32, 8) and c["x0_pred"].shape == (32, 8) for c in calls)
    # final_denoise: the output is the x0 prediction at the last step.
    assert torch.equal(a, calls[-1]["x0_pred"])


def test_without_final_denoise_the_last_step_integrates(gmm8):
    model = _exact(gmm8)
    calls = []
    out = sample(model, 16, sampler="euler-maruyama", steps=4, seed=0, callback=calls.append,
                 final_denoise=False)
    assert not torch.equal(out, calls[-1]["x0_pred"])


def test_labels_come_from_the_seed_and_do_not_shift_the_noise():
    model = build_model({"kind": "mlp", "shape": [4], "schedule": "linear", "num_classes": 5,
                         "width": 16, "depth": 1})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    labels = draw_labels(5, 64, seed=3)
    assert torch.equal(labels, draw_labels(5, 64, seed=3)) and labels.unique().numel() > 1
    a = sample(model, 64, sampler="euler-maruyama", steps=3, seed=3)
    b = sample(model, 64, sampler="euler-maruyama", steps=3, seed=3, y=labels)
    assert torch.equal(a, b)
    fixed = draw_labels(5, 4, seed=0, y=2)
    assert fixed.tolist() == [2, 2, 2, 2]
    with pytest.raises(NoiseshiftError, match="out of range"):
        draw_labels(5, 4, seed=0, y=7)
    with pytest.raises(NoiseshiftError, match="not class-conditional"):
        draw_labels(0, 4, seed=0, y=1)


def test_sampler_settings():
    s = sampler_settings("euler-maruyama", 16)
    assert s == {"name": "euler-maruyama", "steps": 16, "t_max": 1.0, "t_min": 0.0,
                 "diffusion": 2.0, "final_denoise": True}
    assert sampler_settings("ddim", 8, eta=1.0)["eta"] == 1.0
    with pytest.raises(NoiseshiftError, match="takes no option"):
        sampler_settings("euler", 8, eta=1.0)
    with pytest.raises(NoiseshiftError, match="unknown sampler"):
        sampler_settings("dpm", 8)


def test_guidance_wrappers_may_use_autograd_inside():
    # Samplers run under no_grad; a wrapper that needs a gradient enables it itself.
    mix = GaussianMixture(torch.zeros(1, 3), 0.5)
    base = MixtureDenoiser(mix, get_schedule("linear"))

    class GradWrapper(torch.nn.Module):
        prediction, schedule, num_classes, supports_null_t = "velocity", base.schedule, 0, True
        config = {"shape": [3]}
        grads = 0

        def forward(self, x, t, y=None, drop_t=None, drop_y=None):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(xg.pow(2).sum(), xg)
            GradWrapper.grads += 1
            return base(x, t) + 0.0 * g

    out = sample(GradWrapper(), 8, sampler="heun", steps=3)
    assert GradWrapper.grads == 5 and not out.requires_grad


def test_model_mode_is_restored(gmm8):
    model = build_model({"kind": "mlp", "shape": [8], "schedule": "linear", "width": 8,
                         "depth": 1}).train()
    sample(model, 4, steps=2)
    assert model.training


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_step_hook_sees_every_update_and_replaces_the_state(name):
    model = MixtureDenoiser(make_gmm(dim=4, components=2, std=0.3, seed=0).mixture,
                            get_schedule("linear"))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 0.999
    ts = torch.linspace(0.999, 0.0, 6, dtype=torch.float64)
    kw = {"generator": torch.Generator().manual_seed(1)}
    plain = SAMPLERS[name](model, x.clone(), ts, final_denoise=False,
                           generator=torch.Generator().manual_seed(1))
    seen = []

    def same(info):
        seen.append((info["i"], info["t"], info["t_next"]))
        return info["x_next"]

    hooked = SAMPLERS[name](model, x.clone(), ts, final_denoise=False, step_hook=same, **kw)
    assert torch.equal(plain, hooked)
    assert [s[0] for s in seen] == list(range(5))
    assert seen[-1][2] == 0.0
    zeroed = SAMPLERS[name](model, x.clone(), ts, final_denoise=False,
                            step_hook=lambda info: torch.zeros_like(info["x_next"]),
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(zeroed, torch.zeros_like(zeroed))


# -- DPM-Solver++(2M) ---------------------------------------------------------------------

class _ConstantX0(torch.nn.Module):
    """A model whose x0 prediction is the constant mu (the data are a point mass)."""

    prediction, num_classes = "x0", 0

    def __init__(self, mu, schedule="linear"):
        super().__init__()
        self.mu, self.schedule = mu, get_schedule(schedule)

    def forward(self, x, t, y=None, **kw):
        return self.mu.expand_as(x).clone()


@pytest.mark.parametrize("schedule", ["linear", "vp-cosine"])
def test_dpmpp_2m_is_exact_when_x0_is_constant(schedule):
    # With D = mu the probability-flow ODE has the closed form
    # x_t = alpha_t mu + sigma_t / sigma_T (x_T - alpha_T mu), which the exponential
    # integrator follows exactly at any step count; Euler does too under the linear schedule
    # (straight paths), not under vp-cosine.
    mu = torch.tensor([[1.5, -0.5, 0.25]], dtype=torch.float64)
    model, sch = _ConstantX0(mu, schedule), get_schedule(schedule)
    x = torch.randn(16, 3, generator=generator(0), dtype=torch.float64)
    ts = torch.tensor([0.95, 0.7, 0.4, 0.3, 0.1], dtype=torch.float64)
    want = float(sch.alpha(0.1)) * mu + float(sch.sigma(0.1)) / float(sch.sigma(0.95)) * (
        x - float(sch.alpha(0.95)) * mu)
    got = sample_dpmpp_2m(model, x, ts, final_denoise=False)
    assert torch.allclose(got, want, atol=1e-12)
    euler = sample_euler(model, x, ts, final_denoise=False)
    assert torch.allclose(euler, want, atol=1e-12) == (schedule == "linear")


def test_dpmpp_2m_is_second_order(gmm8):
    model = _exact(gmm8)
    x = torch.randn(256, 8, generator=generator(0)).double() * 0.999
    ts = lambda k: torch.linspace(0.999, 0.05, k + 1, dtype=torch.float64)  # noqa: E731
    ref = sample_heun(model, x, ts(1000), final_denoise=False)

    def err(fn, k):
        return float((fn(model, x, ts(k), final_denoise=False) - ref).abs().mean())

    # The multistep start (one first-order step) fades as steps grow: the error ratio per
    # halving was 2.7, 3.3, 3.9 from 8 to 64 steps on this mixture.
    e16, e32, e64 = (err(sample_dpmpp_2m, k) for k in (16, 32, 64))
    assert e16 < 0.3 * err(sample_euler, 16)
    assert e32 / e64 == pytest.approx(4.0, rel=0.2)


def test_dpmpp_2m_equals_k_diffusion_under_the_ve_mapping(gmm8):
    # k-diffusion holds x_ve = x / alpha at sigma_ve = sigma / alpha; its denoiser is the
    # same model's x0, called at the t whose log-SNR is -2 log sigma_ve.
    from test_integrations_k_diffusion import K

    model, sch = _exact(gmm8), get_schedule("linear")
    ts = torch.linspace(0.98, 0.0, 9, dtype=torch.float64)
    x = torch.randn(32, 8, generator=generator(0), dtype=torch.float64) * float(sch.sigma(0.98))

    def denoiser(x_ve, sigma_ve, **kw):
        s = float(sigma_ve.reshape(-1)[0])
        t = float(sch.t_from_log_snr(torch.tensor(-2 * math.log(s), dtype=torch.float64)))
        a = float(sch.alpha(t))
        out = model(a * x_ve, torch.full((x_ve.shape[0],), t, dtype=torch.float64))
        return sch.convert(out, model.prediction, "x0", a * x_ve, t)

    sig = (sch.sigma(ts) / sch.alpha(ts)).double()
    theirs = K.sampling.sample_dpmpp_2m(denoiser, x / float(sch.alpha(0.98)), sig,
                                        disable=True)
    ours = sample_dpmpp_2m(model, x, ts, final_denoise=False)
    assert torch.allclose(ours, theirs, atol=1e-10)
