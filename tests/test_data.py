import numpy as np
import pytest
import torch

from noiseshift.data import (
    GaussianMixture,
    MixtureDenoiser,
    load_array,
    load_data,
    load_digits,
    make_gmm,
)
from noiseshift.errors import NoiseshiftError
from noiseshift.schedules import get_schedule


def _noised(mix, schedule, n=400, seed=0, lo=0.02, hi=0.98):
    g = torch.Generator().manual_seed(seed)
    x0, _ = mix.sample(n, g)
    t = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    x = schedule.alpha(t)[:, None] * x0.double() + schedule.sigma(t)[:, None] * eps
    return x, t, x0.double(), eps


@pytest.mark.parametrize("name", ["linear", "vp-cosine", "vp-linear", "ve"])
def test_score_is_gradient_of_log_density(name):
    sch = get_schedule(name)
    mix = GaussianMixture.random(dim=16, components=4, seed=1)
    x, t, _, _ = _noised(mix, sch, n=64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, t, sch).sum(), x)
    assert torch.allclose(mix.score(x.detach(), t, sch), grad, rtol=1e-8, atol=1e-8)


def test_x0_pred_is_tweedie():
    sch = get_schedule("vp-cosine")
    mix = GaussianMixture.random(dim=8, components=3, seed=2)
    x, t, _, _ = _noised(mix, sch, n=64)
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    tweedie = (x + s**2 * mix.score(x, t, sch)) / a
    assert torch.allclose(mix.x0_pred(x, t, sch), tweedie, atol=1e-8)


def test_single_gaussian_closed_form():
    # N(mu, c^2 I) under the linear schedule: E[x0|x] = mu + a c^2 / v (x - a mu).
    sch = get_schedule("linear")
    mu = torch.full((1, 3), 0.5, dtype=torch.float64)
    mix = GaussianMixture(mu, 0.3)
    x = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.4], dtype=torch.float64)
    a, c, s = 0.6, 0.3, 0.4
    v = a**2 * c**2 + s**2
    expect = mu + a * c**2 / v * (x - a * mu)
    assert torch.allclose(mix.x0_pred(x, t, sch), expect, atol=1e-12)
    assert torch.allclose(mix.score(x, t, sch), -(x - a * mu) / v, atol=1e-12)


def test_velocity_matches_definition():
    sch = get_schedule("linear")
    mix = GaussianMixture.random(dim=8, components=3, seed=3)
    x, t, _, _ = _noised(mix, sch, n=32)
    x0 = mix.x0_pred(x, t, sch)
    eps = (x - sch.alpha(t)[:, None] * x0) / sch.sigma(t)[:, None]
    assert torch.allclose(mix.predict(x, t, sch, "velocity"), eps - x0, atol=1e-8)


@pytest.mark.parametrize("name", ["linear", "vp-cosine"])
def test_posterior_of_t_is_calibrated(name):
    sch = get_schedule(name)
    d = make_gmm(dim=64, components=8, seed=0)
    x, t, _, _ = _noised(d.mixture, sch, n=1500, seed=5)
    grid, post = d.mixture.posterior_t(x, sch)
    assert torch.allclose(post.sum(1), torch.ones(len(x), dtype=torch.float64))
    cdf = post.cumsum(1)
    lo = grid[(cdf < 0.05).sum(1).clamp(max=len(grid) - 1)]
    hi = grid[(cdf < 0.95).sum(1).clamp(max=len(grid) - 1)]
    coverage = ((t >= lo - 0.5 / len(grid)) & (t <= hi + 0.5 / len(grid))).double().mean()
    assert 0.86 <= coverage <= 0.94
    mae = ((post * grid).sum(1) - t).abs().mean()
    assert mae < 0.06


def test_posterior_nearly_flat_in_two_dimensions():
    # The prototype's lesson: in 2-d the noise level can hardly be read.
    sch = get_schedule("linear")
    mix2 = GaussianMixture.random(dim=2, components=4, seed=0)
    mix64 = GaussianMixture.random(dim=64, components=4, seed=0)
    sd = []
    for mix in (mix2, mix64):
        x, _, _, _ = _noised(mix, sch, n=300)
        grid, post = mix.posterior_t(x, sch)
        mean = (post * grid).sum(1, keepdim=True)
        sd.append(((post * (grid - mean) ** 2).sum(1).sqrt()).mean().item())
    assert sd[0] > 0.15 > 0.06 > sd[1]


def test_mixture_denoiser_null_t_is_posterior_average():
    sch = get_schedule("linear")
    d = make_gmm(dim=16, components=3, seed=0)
    den = MixtureDenoiser(d.mixture, sch)
    x, t, _, _ = _noised(d.mixture, sch, n=8)
    x = x.float()
    drop = torch.tensor([True, False] * 4)
    out = den(x, t, drop_t=drop)
    assert torch.allclose(out[~drop], d.mixture.predict(x[~drop], t[~drop], sch), atol=1e-5)
    assert torch.allclose(out[drop], d.mixture.unconditional_predict(x[drop], sch), atol=1e-5)


def test_digits_range_shape_and_subspace():
    d = load_digits(16)
    assert d.x.shape == (1797, 1, 16, 16) and d.labels.shape == (1797,)
    assert d.x.min() == -1.0 and d.x.max() == 1.0
    q = d.subspace
    assert q.shape == (256, 64)
    assert torch.allclose(q.T @ q, torch.eye(64, dtype=torch.float64), atol=1e-10)
    flat = d.x.reshape(len(d), -1).double()
    assert (flat - flat @ q @ q.T).norm() / flat.norm() < 1e-6
    noise = torch.randn(10, 256, dtype=torch.float64)
    assert (noise - noise @ q @ q.T).norm() / noise.norm() > 0.8
    assert load_digits(8).x.shape == (1797, 1, 8, 8)


def test_split_is_seeded_and_disjoint():
    d = make_gmm(dim=4, n=100)
    a1, b1 = d.split(0.2, seed=3)
    a2, b2 = d.split(0.2, seed=3)
    assert torch.equal(a1.x, a2.x) and len(b1) == 20 and len(a1) == 80


def test_user_arrays(tmp_path):
    arr = np.random.default_rng(0).normal(size=(10, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    assert load_array(tmp_path / "a.npy").x.shape == (10, 1, 8, 8)
    np.savez(tmp_path / "b.npz", x=arr[:, 0], labels=np.arange(10) % 3)
    d = load_data(str(tmp_path / "b.npz"))
    assert d.x.shape == (10, 8) and d.num_classes == 3
    import h5py

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = arr
    assert load_array(tmp_path / "c.h5").x.shape == (10, 1, 8, 8)
    bad = arr.copy()
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for name, msg in (("nan.npy", "NaN"), ("junk.npy", "cannot read"), ("none.npy", "no such")):
        with pytest.raises(NoiseshiftError, match=msg) as e:
            load_array(tmp_path / name)
        assert e.value.path.endswith(name)
