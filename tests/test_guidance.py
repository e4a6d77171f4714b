"""Guidance wrappers against the exact Gaussian mixture: known answers, to 1e-6."""

import warnings

import pytest
import torch

from noiseshift.data import GaussianMixture, t_grid
from noiseshift.data import MixtureDenoiser as _MixtureDenoiser
from noiseshift.errors import NoiseshiftError
from noiseshift.guidance import (
    UNCAPPED_INTERVAL,
    ClassifierFreeGuidance,
    EpsScaling,
    EstimatorGradientNAG,
    GuidanceWarning,
    TimeShift,
    build_guidance,
    grad_log_posterior,
    interpolate_log_posterior,
    run_name,
)
from noiseshift.sampling import sample
from noiseshift.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

LIN = get_schedule("linear")
GRID = t_grid(48)  # coarse enough to keep the exact t-unconditional branch fast


class MixtureDenoiser(_MixtureDenoiser):
    """The exact mixture denoiser with its t-unconditional branch on GRID."""

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        out = self.mixture.predict(x, t, self.schedule, self.prediction)
        if drop_t is not None and bool(drop_t.any()):
            i = drop_t.nonzero().squeeze(1)
            out[i] = self.mixture.unconditional_predict(x[i], self.schedule, self.prediction,
                                                        GRID)
        return out


class ExactPosterior:
    """The exact p(t|x) of a mixture behind the estimator interface."""

    def __init__(self, mixture, schedule, grid=None, exact_grad=True):
        self.mixture, self.schedule = mixture, schedule
        self.grid = GRID if grid is None else grid
        if exact_grad:
            self.grad_log_posterior = self._grad

    def log_posterior(self, x):
        ll = self.mixture.log_likelihood_t(x, self.schedule, self.grid)
        return self.grid, torch.log_softmax(ll, -1)

    def predict(self, x):
        grid, lp = self.log_posterior(x)
        p = lp.exp()
        mean = p @ grid
        return mean, (p @ grid**2 - mean**2).clamp(min=0).sqrt()

    def _grad(self, x, t):
        # log p(t|x) = log p(x|t) - log sum_g p(x|t_g), differentiated exactly.
        with torch.enable_grad():
            xg = x.detach().double().requires_grad_(True)
            ll = self.mixture.log_prob(xg, t, self.schedule)
            norm = torch.logsumexp(self.mixture.log_likelihood_t(xg, self.schedule, self.grid), -1)
            (g,) = torch.autograd.grad((ll - norm).sum(), xg)
        return g


class ReadsSchedule:
    """An 'estimator' that always reads the scheduled t (set before each call)."""

    def __init__(self):
        self.t = None

    def predict(self, x):
        return self.t.expand(x.shape[0]), torch.zeros(x.shape[0])


class ClassMixtureDenoiser(torch.nn.Module):
    """Exact class-conditional mixture: class c is the sub-mixture of components labelled c;
    drop_y rows get the whole mixture, drop_t rows the t-unconditional prediction."""

    def __init__(self, mixture, labels, schedule, prediction="velocity"):
        super().__init__()
        self.full = MixtureDenoiser(mixture, schedule, prediction)
        self.labels = torch.as_tensor(labels)
        self.num_classes = int(self.labels.max()) + 1
        self.parts = [
            MixtureDenoiser(GaussianMixture(mixture.means[self.labels == c],
                                            mixture.stds[self.labels == c],
                                            mixture.weights[self.labels == c]),
                            schedule, prediction)
            for c in range(self.num_classes)
        ]
        self.schedule, self.prediction = schedule, prediction
        self.supports_null_t = True
        self.config = {"kind": "class-mixture"}
        self.calls = 0

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        self.calls += 1
        n = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        dt = torch.zeros(n, dtype=torch.bool) if drop_t is None else drop_t
        dy = torch.ones(n, dtype=torch.bool) if drop_y is None or y is None else drop_y
        out = self.full(x, t, drop_t=dt).clone()
        for c, part in enumerate(self.parts):
            i = ((y == c) & ~dy).nonzero().squeeze(1) if y is not None else []
            if len(i):
                out[i] = part(x[i], t[i], drop_t=dt[i])
        return out


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner, self.calls, self.batch = model, 0, []
        for k in ("schedule", "prediction", "num_classes", "config"):
            setattr(self, k, getattr(model, k))
        self.supports_null_t = model.supports_null_t

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        self.calls += 1
        self.batch.append(x.shape[0])
        return self.inner(x, t, y, drop_t, drop_y)


@pytest.fixture(scope="module")
def mix():
    return GaussianMixture.random(dim=32, components=4, std=0.3, seed=3)


def _states(mix, schedule, n=24, seed=0, lo=0.05, hi=0.95):
    g = torch.Generator().manual_seed(seed)
    x0, k = mix.sample(n, g)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    x = schedule.alpha(t)[:, None] * x0.double() + schedule.sigma(t)[:, None] * eps
    return x, t, k


def _nag_reference(mix, schedule, x, t, w):
    return (w + 1) * mix.score(x, t, schedule) - w * mix.unconditional_score(x, schedule, GRID)


# -- exact NAG identities --------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["score", "velocity", "eps"])
def test_estimator_nag_with_exact_posterior_is_classifier_free_nag(mix, prediction):
    model = MixtureDenoiser(mix, LIN, prediction)
    x, t, _ = _states(mix, LIN)
    w = 1.5
    guided = EstimatorGradientNAG(model, ExactPosterior(mix, LIN), scale=w, interval=(0, 1))
    got = LIN.convert(guided(x, t), prediction, "score", x, t)
    assert torch.allclose(got, _nag_reference(mix, LIN, x, t, w), rtol=1e-6, atol=1e-6)


def test_classifier_free_nag_on_a_score_model_is_exact_nag(mix):
    # A null-t branch trained on scores learns E[score | x] = grad log p(x).
    model = MixtureDenoiser(mix, LIN, "score")
    x, t, _ = _states(mix, LIN)
    got = ClassifierFreeGuidance(model, nag_scale=2.0, nag_interval=(0, 1))(x, t)
    assert torch.allclose(got, _nag_reference(mix, LIN, x, t, 2.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "vp-cosine"])
def test_output_space_mixing_is_score_space_mixing_at_fixed_t(mix, name):
    # The map velocity -> score is affine at fixed t, so mixing outputs then converting
    # equals converting both branches at t then mixing. The null-t velocity E[v | x] read at
    # t is *not* grad log p(x), though: published CF-NAG on a velocity model is not exact NAG.
    sch = get_schedule(name)
    model = MixtureDenoiser(mix, sch, "velocity")
    x, t, _ = _states(mix, sch)
    guided = ClassifierFreeGuidance(model, nag_scale=2.0, nag_interval=(0, 1))
    got = sch.convert(guided(x, t), "velocity", "score", x, t)
    v_u = mix.unconditional_predict(x, sch, "velocity", GRID)
    s_u = sch.convert(v_u, "velocity", "score", x, t)
    assert torch.allclose(got, 3.0 * mix.score(x, t, sch) - 2.0 * s_u, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, _nag_reference(mix, sch, x, t, 2.0), rtol=1e-3, atol=1e-3)


def test_projected_gradient_moves_only_along_the_predicted_noise(mix):
    model = MixtureDenoiser(mix, LIN, "velocity")
    est = ExactPosterior(mix, LIN)
    x, t, _ = _states(mix, LIN, lo=0.1, hi=0.75)
    w = 2.0
    guided = EstimatorGradientNAG(model, est, scale=w, project=True)
    change = (LIN.convert(guided(x, t), "velocity", "score", x, t)
              - LIN.convert(model(x, t), "velocity", "score", x, t))
    eps = LIN.convert(model(x, t), "velocity", "eps", x, t)
    g = est.grad_log_posterior(x, t)
    e_hat = eps / eps.norm(dim=1, keepdim=True)
    along = (g * e_hat).sum(1, keepdim=True)
    assert torch.allclose(change, w * along * e_hat, rtol=1e-6, atol=1e-8)
    assert guided.describe()["nag"]["mode"] == "estimator-noise"


def test_gradient_from_interpolated_log_posterior_matches_exact(mix):
    # On grid points the interpolation is exact, so autograd through log_posterior must
    # reproduce score(x|t) - score(x).
    grid = t_grid(64)
    x, _, _ = _states(mix, LIN, n=16)
    t = grid[torch.randint(8, 56, (16,), generator=torch.Generator().manual_seed(1))]
    est = ExactPosterior(mix, LIN, grid, exact_grad=False)
    g = grad_log_posterior(est, x.float(), t)
    expect = mix.score(x, t, LIN) - mix.unconditional_score(x, LIN, grid)
    assert torch.allclose(g, expect, rtol=1e-3, atol=1e-3)  # float32 input x
    with torch.inference_mode():  # samplers may run under inference mode
        g2 = grad_log_posterior(est, x.float(), t)
    assert torch.equal(g, g2)


def test_interpolate_log_posterior_is_linear_between_points():
    grid = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    logp = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64).expand(4, 3)
    t = torch.tensor([0.1, 0.375, 0.6, 0.9], dtype=torch.float64)
    got = interpolate_log_posterior(grid, logp, t)
    assert torch.allclose(got, torch.tensor([0.0, 0.5, 1.8, 3.0], dtype=torch.float64))


def test_cf_read_at_the_scheduled_t_is_plain_cf(mix):
    model = MixtureDenoiser(mix, LIN, "velocity")
    x, t, _ = _states(mix, LIN)
    reader = ReadsSchedule()
    reader.t = t
    cf = ClassifierFreeGuidance(model, nag_scale=1.0, nag_interval=(0, 1))
    read = ClassifierFreeGuidance(model, nag_scale=1.0, nag_interval=(0, 1), read=reader)
    assert torch.allclose(read(x, t), cf(x, t), rtol=1e-9, atol=1e-9)
    # The control at t' = t has nothing to correct with: it returns the conditional output.
    ctrl = ClassifierFreeGuidance(model, nag_scale=1.0, nag_interval=(0, 1), read=reader,
                                  control=True)
    assert torch.allclose(ctrl(x, t), model(x, t), rtol=1e-9, atol=1e-9)


def test_cf_read_converts_the_null_branch_at_the_reading(mix):
    model = MixtureDenoiser(mix, LIN, "velocity")
    x, t, _ = _states(mix, LIN, lo=0.2, hi=0.7)
    reader = ReadsSchedule()
    reader.t = t + 0.05
    w = 0.5
    got = ClassifierFreeGuidance(model, nag_scale=w, nag_interval=(0, 1), read=reader)(x, t)
    s_c = mix.score(x, t, LIN)
    v_u = mix.unconditional_predict(x, LIN, "velocity", GRID)
    s_r = LIN.convert(v_u, "velocity", "score", x, t + 0.05)
    expect = LIN.convert((w + 1) * s_c - w * s_r, "score", "velocity", x, t)
    assert torch.allclose(got, expect, rtol=1e-6, atol=1e-6)


# -- zero scale, intervals, batching --------------------------------------------------------

def test_zero_scale_and_empty_interval_return_the_model_output_bit_for_bit(mix):
    model = MixtureDenoiser(mix, LIN, "velocity")
    x, t, _ = _states(mix, LIN)
    x = x.float()
    ref = model(x, t)
    est = ExactPosterior(mix, LIN)
    for g in (
        ClassifierFreeGuidance(model, nag_scale=0.0),
        EstimatorGradientNAG(model, est, scale=0.0),
        EstimatorGradientNAG(model, est, scale=2.0, interval=(0.99, 1.0)),
        ClassifierFreeGuidance(model, nag_scale=2.0, nag_interval=(0.99, 1.0)),
        EpsScaling(model, scale=1.0),
    ):
        assert torch.equal(g(x, t), ref)
    guided, desc = build_guidance(model)
    assert guided is model and desc == {"kind": "none"} and run_name(desc) == "unguided"


def test_interval_applies_per_row(mix):
    model = MixtureDenoiser(mix, LIN, "score")
    x, t, _ = _states(mix, LIN, n=40)
    g = ClassifierFreeGuidance(model, nag_scale=1.0)  # default interval
    out = g(x, t)
    lo, hi = UNCAPPED_INTERVAL
    inside = (t >= lo) & (t <= hi)
    assert inside.any() and (~inside).any()
    assert torch.equal(out[~inside], model(x, t)[~inside])
    ref = _nag_reference(mix, LIN, x[inside], t[inside], 1.0)
    assert torch.allclose(out[inside], ref, rtol=1e-6, atol=1e-6)


def test_cfg_and_nag_branches_go_in_one_batch_and_match_separate_calls(mix):
    labels = torch.tensor([0, 0, 1, 1])
    model = Counting(ClassMixtureDenoiser(mix, labels, LIN))
    x, t, _ = _states(mix, LIN, n=12, lo=0.1, hi=0.7)
    y = torch.arange(12) % 2
    g = ClassifierFreeGuidance(model, cfg_scale=1.5, nag_scale=0.7, nag_interval=(0, 1))
    out = g(x, t, y)
    assert model.calls == 1 and model.batch == [36]
    ones = torch.ones(12, dtype=torch.bool)
    cond = model(x, t, y, ~ones, ~ones)
    nul_c = model(x, t, y, ~ones, ones)
    nul_t = model(x, t, y, ones, ~ones)
    expect = cond + 1.5 * (cond - nul_c) + 0.7 * (cond - nul_t)
    assert torch.allclose(out, expect, rtol=1e-6, atol=1e-6)


def test_cfg_with_a_single_class_is_the_conditional_model(mix):
    model = ClassMixtureDenoiser(mix, torch.zeros(4, dtype=torch.int64), LIN)
    x, t, _ = _states(mix, LIN)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    out = ClassifierFreeGuidance(model, cfg_scale=3.0)(x, t, y)
    assert torch.allclose(out, model(x, t, y, drop_y=torch.zeros(len(y), dtype=torch.bool)),
                          rtol=1e-9, atol=1e-9)


def test_cfg_is_class_score_guidance_in_score_space(mix):
    labels = torch.tensor([0, 1, 1, 0])
    model = ClassMixtureDenoiser(mix, labels, LIN, "velocity")
    x, t, _ = _states(mix, LIN)
    y = torch.ones(x.shape[0], dtype=torch.int64)
    got = LIN.convert(ClassifierFreeGuidance(model, cfg_scale=2.0)(x, t, y), "velocity",
                      "score", x, t)
    sub = model.parts[1].mixture
    expect = 3.0 * sub.score(x, t, LIN) - 2.0 * mix.score(x, t, LIN)
    assert torch.allclose(got, expect, rtol=1e-6, atol=1e-6)


# -- peers ------------------------------------------------------------------------------------

def test_eps_scaling_divides_eps_and_keeps_the_state_consistent(mix):
    model = MixtureDenoiser(mix, LIN, "velocity")
    x, t, _ = _states(mix, LIN)
    t[0] = 1.0  # alpha = 0: left alone
    g = EpsScaling(model, scale=1.01, slope=0.02)
    out = g(x, t)
    assert torch.equal(out[0], model(x, t)[0])
    lam = (0.02 * t + 1.01)[1:, None]
    eps_ref = LIN.convert(model(x, t), "velocity", "eps", x, t)[1:] / lam
    x0, eps = LIN.to_x0_eps(out[1:], "velocity", x[1:], t[1:])
    assert torch.allclose(eps, eps_ref, atol=1e-9)
    a, s = LIN.alpha(t[1:])[:, None], LIN.sigma(t[1:])[:, None]
    assert torch.allclose(a * x0 + s * eps, x[1:], atol=1e-9)


def test_time_shift_reads_the_true_level_and_keeps_its_x0(mix):
    big = GaussianMixture.random(dim=256, components=4, std=0.3, seed=5)
    model = MixtureDenoiser(big, LIN, "velocity")
    g = torch.Generator().manual_seed(0)
    x0, _ = big.sample(64, g)
    t_true = 0.6
    x = (1 - t_true) * x0.double() + t_true * torch.randn(64, 256, generator=g,
                                                          dtype=torch.float64)
    t = torch.full((64,), 0.5, dtype=torch.float64)
    ts = TimeShift(model, window=0.4, cutoff=0.2, data_m2=big.second_moment())
    t_s = ts.shifted_t(x, t)
    assert abs(float(t_s.mean()) - t_true) < 0.02
    out = ts(x, t)
    x0_out = LIN.convert(out, "velocity", "x0", x, t)
    assert torch.allclose(x0_out, big.x0_pred(x, t_s, LIN), atol=1e-6)
    # Below the cutoff the model is left alone.
    low = TimeShift(model, window=0.4, cutoff=0.55, data_m2=big.second_moment())
    assert torch.equal(low(x, t), model(x, t))


# -- building, naming, errors -----------------------------------------------------------------

class NoNullT(torch.nn.Module):
    schedule, prediction, num_classes, supports_null_t, config = LIN, "velocity", 0, False, {}

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        return x


def test_cf_modes_need_a_null_t_branch():
    for mode in ("cf", "cf-read"):
        with pytest.raises(NoiseshiftError, match="--t-dropout.*--nag-mode estimator"):
            build_guidance(NoNullT(), nag_scale=1.0, nag_mode=mode, estimator=ReadsSchedule())
    # The control needs no null-t branch.
    build_guidance(NoNullT(), nag_scale=1.0, nag_mode="cf-read-control",
                   estimator=ReadsSchedule())


def test_option_errors(mix):
    model = MixtureDenoiser(mix, LIN)
    with pytest.raises(NoiseshiftError, match="class-conditional"):
        build_guidance(model, cfg_scale=1.0)
    with pytest.raises(NoiseshiftError, match="estimator"):
        build_guidance(model, nag_scale=1.0, nag_mode="estimator")
    with pytest.raises(NoiseshiftError, match="nag-mode"):
        build_guidance(model, nag_scale=1.0, nag_mode="bogus")
    with pytest.raises(NoiseshiftError, match="interval"):
        build_guidance(model, nag_scale=1.0, nag_mode="cf", interval=(0.9, 0.1))
    with pytest.raises(NoiseshiftError, match="positive"):
        build_guidance(model, eps_scale=(1.0, -2.0))


def test_build_guidance_composes_and_names(mix):
    labels = torch.tensor([0, 0, 1, 1])
    model = ClassMixtureDenoiser(mix, labels, LIN)
    est = ExactPosterior(mix, LIN)
    _, d = build_guidance(model, nag_scale=1.5, estimator=est)
    assert run_name(d) == d["kind"] == "nag-estimator-step-1.5"
    _, d = build_guidance(model, nag_scale=1.5, nag_mode="estimator-noise", estimator=est)
    assert run_name(d) == "nag-estimator-noise-1.5"
    _, d = build_guidance(model, nag_scale=1.5, nag_mode="estimator", estimator=est)
    assert run_name(d) == "nag-estimator-1.5"
    assert d["nag"]["estimator"]["kind"] == "ExactPosterior"
    _, d = build_guidance(model, nag_scale=1, nag_mode="cf", cfg_scale=2)
    assert run_name(d) == "cfg-2+nag-cf-1"
    _, d = build_guidance(model, eps_scale=1.004)
    assert run_name(d) == "eps-scale-1.004"
    _, d = build_guidance(model, nag_scale=0.5, nag_mode="cf-read", estimator=est,
                          interval=(0.1, 0.7))
    assert run_name(d) == "nag-cf-read-0.5@0.1-0.7"

    class Data:
        mixture, dim = mix, 32

        def second_moment(self):
            return mix.second_moment()

    guided, d = build_guidance(model, time_shift=(0.1, 0.2), data=Data())
    assert run_name(d) == "time-shift-0.1-0.2"
    assert guided.config["guidance"] == {k: v for k, v in d.items() if k != "kind"}
    assert guided.data_m2 == mix.second_moment()


def test_estimator_nag_with_cfg_adds_the_gradient_to_the_cfg_output(mix):
    labels = torch.tensor([0, 0, 1, 1])
    model = ClassMixtureDenoiser(mix, labels, LIN, "score")
    est = ExactPosterior(mix, LIN)
    x, t, _ = _states(mix, LIN, lo=0.1, hi=0.7)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    guided, _ = build_guidance(model, nag_scale=1.0, cfg_scale=1.0, estimator=est,
                               nag_mode="estimator")
    cfg, _ = build_guidance(model, cfg_scale=1.0)
    expect = cfg(x, t, y) + est.grad_log_posterior(x, t)
    assert torch.allclose(guided(x, t, y), expect, atol=1e-9)


def test_low_dimensional_data_warns(mix):
    small = MixtureDenoiser(GaussianMixture.random(dim=2, components=3, seed=0), LIN)
    for model, warns in ((small, True), (MixtureDenoiser(mix, LIN), False)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            build_guidance(model, nag_scale=1.0, nag_mode="cf")
        assert any(issubclass(r.category, GuidanceWarning) for r in rec) == warns


# -- inside the samplers ----------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "heun", "euler-maruyama", "ddim"])
def test_zero_scale_reproduces_unguided_sampling_bit_for_bit(mix, sampler):
    model = MixtureDenoiser(mix, LIN)
    est = ExactPosterior(mix, LIN)
    ref = sample(model, 16, sampler=sampler, steps=4, seed=3)
    for guided in (EstimatorGradientNAG(model, est, scale=0.0),
                   ClassifierFreeGuidance(model, nag_scale=0.0),
                   EstimatorGradientNAG(model, est, scale=1.0, interval=(0.99, 1.0))):
        assert torch.equal(sample(guided, 16, sampler=sampler, steps=4, seed=3), ref)


def test_guidance_over_the_whole_range_stays_finite_at_t_1(mix):
    model = MixtureDenoiser(mix, LIN)
    est = ExactPosterior(mix, LIN)
    for mode in ("estimator", "cf-read"):
        guided, _ = build_guidance(model, nag_scale=1.0, nag_mode=mode, estimator=est,
                                   interval=(0, 1), eps_scale=1.01)
        assert torch.isfinite(sample(guided, 8, sampler="euler-maruyama", steps=4)).all()
