"""Quality metrics with known answers: FD closed forms, precision/recall extremes, the exact
mixture metrics, and `quality` / `quality_difference`."""

import numpy as np
import pytest
import torch

from noiseshift.analysis import quality as Q
from noiseshift.analysis.classifier import digits_classifier
from noiseshift.data import GaussianMixture, load_digits, make_gmm
from noiseshift.errors import NoiseshiftError

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


# -- Fréchet distance --------------------------------------------------------------------------

def test_fd_of_a_set_with_itself_is_zero():
    f = gaussian(500, np.zeros(16), np.eye(16), 0)
    assert Q.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_frechet_matches_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    # Commuting (diagonal) covariances: sum (sqrt a - sqrt b)^2.
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert Q.gaussian_frechet(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)
    # General covariances: against scipy's matrix square root.
    from scipy.linalg import sqrtm

    q1, q2 = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    c1, c2 = q1 @ q1.T + 0.1 * np.eye(8), q2 @ q2.T + 0.1 * np.eye(8)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert Q.gaussian_frechet(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)


def test_sample_fd_approaches_the_closed_form():
    d = 4
    f1 = gaussian(20000, np.zeros(d), np.eye(d), 1)
    f2 = gaussian(20000, np.full(d, 0.5), 4 * np.eye(d), 2)
    want = d * 0.25 + d * (1 - 2) ** 2  # |mu|^2 + tr (sqrt C1 - sqrt C2)^2
    assert Q.frechet_distance(f1, f2) == pytest.approx(want, rel=0.05)


def test_fd_ci_brackets_the_value():
    real = gaussian(1800, np.zeros(64), np.eye(64), 0)
    fake = gaussian(512, np.full(64, 0.1), np.eye(64), 1)
    est = Q.fd(fake, real, n_boot=200)
    assert est.lo < est.value < est.hi


def test_paired_fd_difference():
    real = gaussian(1000, np.zeros(16), np.eye(16), 0)
    a = gaussian(400, np.zeros(16), np.eye(16), 1)
    same = Q.fd_difference(a, a, real, n_boot=100)
    assert same.value == 0.0 and same.lo == 0.0 and same.hi == 0.0
    worse = Q.fd_difference(a, a + 0.5, real, n_boot=100)  # every sample moved: paired
    assert worse.value > 0 and worse.excludes_zero()
    with pytest.raises(NoiseshiftError):
        Q.fd_difference(a, a[:10], real)


# -- precision and recall ----------------------------------------------------------------------

def test_precision_recall_identical_and_disjoint():
    real = gaussian(600, np.zeros(8), np.eye(8), 0)
    p, r = Q.precision_recall(real, real, n_boot=50)
    assert p.value == 1.0 and r.value == 1.0
    p, r = Q.precision_recall(real + 100.0, real, n_boot=50)
    assert p.value == 0.0 and r.value == 0.0


def test_precision_recall_see_mode_dropping():
    """Fakes from one half of the real support: precise but half the recall."""
    real = gaussian(2000, np.zeros(2), np.eye(2), 0)
    fake = gaussian(4000, np.zeros(2), np.eye(2), 1)
    fake = fake[fake[:, 0] > 0][:1000]
    p, r = Q.precision_recall(fake, real, n_boot=50)
    assert p.value > 0.9 and 0.35 < r.value < 0.65
    dp, dr = Q.precision_recall_difference(real[:1000], fake, real, n_boot=50)
    assert dr.value < -0.3 and dr.excludes_zero()


# -- mixtures ----------------------------------------------------------------------------------

def test_mixture_metrics():
    mix = GaussianMixture.random(16, 4, 0.25, 0)
    x, k = mix.sample(600, torch.Generator().manual_seed(1))
    ll = Q.mixture_log_likelihood(x, mix, n_boot=50)
    # Per component N(mu, 0.25^2 I) with well separated modes: E log p = -d/2 log(2 pi e s^2)
    # - log K.
    want = -8 * np.log(2 * np.pi * np.e * 0.25**2) - np.log(4)
    assert ll.lo < want < ll.hi
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert Q.mixture_log_likelihood(noisy, mix, n_boot=50).value < ll.value - 10
    e_same = Q.energy_distance(x, mix, n_boot=50)
    e_noisy = Q.energy_distance(noisy, mix, n_boot=50)
    assert e_same.lo < 0 < e_same.hi and e_noisy.lo > e_same.hi
    cov = Q.mode_coverage(x, mix)
    assert cov["covered"] == 1.0 and cov["on_mode"] > 0.99 and sum(cov["counts"]) > 590
    assert Q.mode_coverage(x[k == 0], mix)["covered"] == 0.25


@pytest.fixture(scope="module")
def classifier():
    return digits_classifier()  # conftest points the cache at a temporary folder


def test_quality_for_mixture_and_digits(classifier):
    data = make_gmm(dim=16, n=1024)
    x, _ = data.mixture.sample(256, torch.Generator().manual_seed(5))
    q = Q.quality(x, data, n_boot=20)
    assert {"fd", "precision", "recall", "log_likelihood", "energy", "modes"} <= set(q)
    d = Q.quality_difference(x, x, data, n_boot=20)
    assert d["fd"].value == 0 and d["log_likelihood"].value == 0
    digits = load_digits(16)
    space = Q.feature_space(digits, classifier=classifier)
    q = Q.quality(digits.x[:128], digits, labels=digits.labels[:128], space=space, n_boot=20)
    assert q["accuracy"].value > 0.9 and q["precision"].value > 0.9
