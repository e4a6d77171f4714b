"""Sample quality, with bootstrap confidence intervals throughout.

- Fréchet distance (FD) in the penultimate features of the digits classifier
  (`classifier.digits_classifier`), or in raw/PCA features for other data.
- Classifier accuracy against the requested class (`classifier.classifier_accuracy`).
- k-NN precision and recall (Kynkäänniemi et al., 2019) in the same feature space.
- For Gaussian mixtures: exact average log-likelihood, energy distance to fresh samples, mode
  coverage.

Every number comes as an `Estimate` (`statistics`). Runs that share seeds share their initial
noise, so sample i of run A pairs with sample i of run B: the differences (`*_difference`)
resample sample indices jointly, which is what makes a small improvement resolvable.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import DATA_END
from ..errors import NoiseshiftError
from .classifier import apply_batched, classifier_accuracy, classifier_hits, digits_classifier
from .statistics import N_BOOT, Estimate, bootstrap, bootstrap_mean

__all__ = [
    "FeatureSpace",
    "energy_distance",
    "energy_distance_difference",
    "fd",
    "fd_difference",
    "fd_linear",
    "fd_linear_difference",
    "fd_reference",
    "feature_space",
    "frechet_distance",
    "gaussian_frechet",
    "kernel_mean_offdiagonal",
    "kid",
    "kid_difference",
    "mixture_log_likelihood",
    "mode_coverage",
    "mode_shares",
    "mode_weights_tv",
    "precision_recall",
    "precision_recall_difference",
    "quality",
    "quality_difference",
]


# -- feature spaces ------------------------------------------------------------------------------

class FeatureSpace:
    """Maps samples to features and holds the reference (real data) features.

    "digits": the classifier's penultimate layer. Otherwise: the raw values when d <= 64, else
    the top 64 principal components of the reference data (sklearn PCA).
    """

    def __init__(self, reference, kind: str = "auto", classifier=None, dims: int = 64):
        from sklearn.decomposition import PCA

        reference = torch.as_tensor(reference)
        self.kind = kind
        if kind == "digits":
            self.net = classifier or digits_classifier()
            self._fn = lambda x: apply_batched(self.net.features, x)
        else:
            flat = reference.reshape(len(reference), -1).double().numpy()
            self._pca = None
            if flat.shape[1] > dims:
                self._pca = PCA(dims, random_state=0).fit(flat)
            self._fn = self._raw
        self.reference = self._fn(reference)
        self._radii: dict[int, np.ndarray] = {}

    @property
    def label(self) -> str:
        """What space the numbers are in, for the report."""
        d = self.reference.shape[1]
        if self.kind == "digits":
            return f"digits classifier penultimate features ({d}-d, noiseshift's own)"
        return f"raw values ({d}-d)" if self._pca is None else \
            f"top {d} principal components of the raw data values"

    def radii(self, k: int = 3) -> np.ndarray:
        """k-NN radii of the reference features (computed once per k)."""
        if k not in self._radii:
            self._radii[k] = _knn_radii(self.reference, k)
        return self._radii[k]

    def _raw(self, x) -> np.ndarray:
        flat = torch.as_tensor(x).reshape(len(x), -1).double().numpy()
        return flat if self._pca is None else self._pca.transform(flat)

    def __call__(self, x) -> np.ndarray:
        return self._fn(x)


def feature_space(data, **kw) -> FeatureSpace:
    """The feature space for a `Dataset`: the digits classifier for digits, else raw/PCA."""
    kind = "digits" if data.name == "digits" else "raw"
    return FeatureSpace(data.x, kind, **kw)


# -- Fréchet distance ----------------------------------------------------------------------------

def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_frechet(mu1, c1, mu2, c2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2): the closed form, through
    symmetric eigendecompositions (stable for singular covariances)."""
    s1 = _sqrtm_psd(c1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ c2 @ s1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross)


def _stats(f: np.ndarray):
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FD between two feature sets (N, k) and (M, k)."""
    return gaussian_frechet(*_stats(f1), *_stats(f2))


def _psd_factor(c: np.ndarray) -> np.ndarray:
    """Some F with F F' = c. tr((F' C F)^1/2) = tr((C_r^1/2 C C_r^1/2)^1/2) for any such F
    (both matrices have the eigenvalues of C_r C), so the Cholesky factor, 20x cheaper than
    an eigendecomposition at d = 2048, serves; a singular c, where Cholesky fails, gets
    V W^1/2 from its eigendecomposition."""
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(c)
        return v * np.sqrt(np.clip(w, 0, None))


class _Reference:
    """Moments of the real features and a factor of their covariance (`_psd_factor`),
    computed once: each bootstrap replicate then costs one covariance and one 64x64
    eigendecomposition."""

    def __init__(self, real: np.ndarray):
        self.mu, self.cov = _stats(real)
        self.factor = _psd_factor(self.cov)
        self.trace = float(np.trace(self.cov))

    def cross_eigh(self, cov: np.ndarray, vectors: bool = False):
        """The eigenvalues (and vectors) of F' cov F: their square roots sum to
        tr((C_r^1/2 cov C_r^1/2)^1/2)."""
        m = self.factor.T @ cov @ self.factor
        return np.linalg.eigh(m) if vectors else np.linalg.eigvalsh(m)

    def distance(self, fake: np.ndarray) -> float:
        mu, cov = _stats(fake)
        cross = np.sqrt(np.clip(self.cross_eigh(cov), 0, None)).sum()
        return float(((mu - self.mu) ** 2).sum() + np.trace(cov) + self.trace - 2 * cross)


def fd(fake: np.ndarray, real: np.ndarray, **kw) -> Estimate:
    """FD of generated features to real ones. The CI resamples the generated samples; the
    real statistics are the fixed yardstick (as FID's are)."""
    ref = _Reference(real)
    return bootstrap(lambda i: ref.distance(fake[i]), len(fake), **kw)


def fd_difference(fake_a: np.ndarray, fake_b: np.ndarray, real: np.ndarray, **kw) -> Estimate:
    """FD(b) - FD(a) with a paired CI: sample i of run a and of run b are resampled together
    (same initial noise), both measured against the same real statistics."""
    _same_length(fake_a, fake_b)
    ref = _Reference(real)
    return bootstrap(lambda i: ref.distance(fake_b[i]) - ref.distance(fake_a[i]),
                     len(fake_a), **kw)


# -- FD and KID in wide feature spaces (Inception's 2048-d): CIs by linearisation ------------
#
# An exact bootstrap of FD costs a d x d covariance and eigendecomposition per resample
# (minutes each way at d = 2048, n = 10,000). Both statistics are smooth functions of the
# generated sample, so each gets per-sample values whose mean is the statistic exactly and
# whose spread is its first-order (influence function, Hoeffding) expansion; the CI is the
# bootstrap of their mean, and a paired difference is the mean of differences.

def _fd_values(fake: np.ndarray, ref: _Reference) -> np.ndarray:
    """Per-sample values with mean FD(fake): FD plus each sample's centred influence,
    2 (mu - mu_r).z + |z|^2 - z' B z (z = x - mu; B = A (A C A)^-1/2 A, A = C_r^1/2, the
    gradient of tr((A C A)^1/2) in C; with F F' = C_r the same gradient is
    F (F' C F)^-1/2 F' = M M', M = F V W^-1/4 from F' C F = V W V'). One eigendecomposition
    gives both the distance (its eigenvalues) and the influence (its vectors)."""
    mu, cov = _stats(fake)
    w, v = ref.cross_eigh(cov, vectors=True)
    value = float(((mu - ref.mu) ** 2).sum() + np.trace(cov) + ref.trace
                  - 2 * np.sqrt(np.clip(w, 0, None)).sum())
    keep = w > max(float(w.max()), 0.0) * 1e-12
    m = ref.factor @ (v[:, keep] / w[keep] ** 0.25)
    z = fake - mu
    infl = 2 * z @ (mu - ref.mu) + (z * z).sum(1) - ((z @ m) ** 2).sum(1)
    return value + infl - infl.mean()


def fd_linear(fake: np.ndarray, real: np.ndarray, ref=None, **kw) -> Estimate:
    """FD of generated features to real ones (the same value as `fd`), with a linearised
    bootstrap CI (see above). ``ref``: `fd_reference(real)`, when cached."""
    return bootstrap_mean(_fd_values(fake, ref or _Reference(real)), **kw)


def fd_linear_difference(fake_a, fake_b, real, ref=None, **kw) -> Estimate:
    """FD(b) - FD(a), paired, with a linearised bootstrap CI."""
    _same_length(fake_a, fake_b)
    ref = ref or _Reference(real)
    return bootstrap_mean(_fd_values(fake_b, ref) - _fd_values(fake_a, ref), **kw)


def fd_reference(real: np.ndarray) -> _Reference:
    """The real features' moments and covariance square root, for `fd_linear`'s ``ref``."""
    return _Reference(real)


def _gram_blocks(x: np.ndarray, y: np.ndarray, block: int = 2048):
    """(row slice, x[rows] @ y.T) by blocks of rows: the one pass over a Gram matrix that
    KID's kernel and the k-NN distances both read."""
    for lo in range(0, len(x), block):
        yield slice(lo, lo + block), x[lo:lo + block] @ y.T


def _poly_kernel(gram: np.ndarray, d: int) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3 from the Gram block x.y."""
    t = gram / d
    t += 1
    k = t * t  # products: numpy's ** 3 calls pow() per element, several times slower
    k *= t
    return k


def _kernel_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row sums of the polynomial kernel k(x, y), by blocks."""
    sums = np.empty(len(x))
    for rows, g in _gram_blocks(x, y):
        sums[rows] = _poly_kernel(g, x.shape[1]).sum(1)
    return sums


def kernel_mean_offdiagonal(x: np.ndarray, sums: np.ndarray | None = None) -> float:
    """Mean of k(x_i, x_j) over i != j. ``sums``: the row sums of k(x, x), when computed."""
    n, d = x.shape
    diag = ((x * x).sum(1) / d + 1) ** 3
    sums = _kernel_sums(x, x) if sums is None else sums
    return float((sums.sum() - diag.sum()) / (n * (n - 1)))


def _kid_values(fake: np.ndarray, real: np.ndarray, real_term: float, sums=None) -> np.ndarray:
    """Per-sample values with mean the unbiased MMD^2 (KID) of fake to real: each sample's
    Hoeffding projection 2 mean_j k(x_i, x_j) - U_xx - 2 mean_r k(x_i, y_r) + U_yy.
    ``sums``: the row sums of k(fake, fake) and k(fake, real), when computed."""
    m, d = fake.shape
    own_sums, cross_sums = sums or (_kernel_sums(fake, fake), _kernel_sums(fake, real))
    own = (own_sums - ((fake * fake).sum(1) / d + 1) ** 3) / (m - 1)
    return 2 * own - own.mean() - 2 * cross_sums / len(real) + real_term


def kid(fake: np.ndarray, real: np.ndarray, real_term: float | None = None, **kw) -> Estimate:
    """Kernel inception distance: the unbiased MMD^2 with the cubic polynomial kernel, on the
    whole sets (torchmetrics' `KernelInceptionDistance` with one subset of all samples gives
    the same value), CI linearised. ``real_term``: `kernel_mean_offdiagonal(real)`, cached."""
    yy = kernel_mean_offdiagonal(real) if real_term is None else real_term
    return bootstrap_mean(_kid_values(fake, real, yy), **kw)


def kid_difference(fake_a, fake_b, real, real_term: float | None = None, **kw) -> Estimate:
    """KID(b) - KID(a), paired, with a linearised CI."""
    _same_length(fake_a, fake_b)
    yy = kernel_mean_offdiagonal(real) if real_term is None else real_term
    return bootstrap_mean(_kid_values(fake_b, real, yy) - _kid_values(fake_a, real, yy), **kw)


def _same_length(fake_a, fake_b) -> None:
    if len(fake_a) != len(fake_b):
        raise NoiseshiftError(f"paired runs need the same number of samples, got "
                              f"{len(fake_a)} and {len(fake_b)}")


# -- precision and recall ------------------------------------------------------------------------

def _knn_radii(f: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(f).kneighbors(f)
    return dist[:, k]  # column 0 is the point itself


def _coverage(real: np.ndarray, fake: np.ndarray, k: int, real_radii=None):
    """Boolean matrices: in_real[i, j] = fake i inside real j's k-NN ball;
    in_fake[i, j] = real j inside fake i's k-NN ball."""
    from sklearn.metrics import pairwise_distances

    d = pairwise_distances(fake, real)
    rr = _knn_radii(real, k) if real_radii is None else real_radii
    return d <= rr[None, :], d <= _knn_radii(fake, k)[:, None]


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = 3, real_radii=None,
                     coverage=None, **kw) -> tuple[Estimate, Estimate]:
    """Improved precision (share of generated samples inside the real manifold, the union of
    k-NN balls) and recall (share of real samples inside the generated manifold).

    CIs resample the generated set; the balls keep the radii of the full sets (a resample's
    duplicates would shrink k-NN radii to zero). `real_radii` (from `FeatureSpace.radii`)
    saves recomputing the real set's k-NN radii for every run; ``coverage`` the two
    matrices (`_coverage`), when already computed."""
    in_real, in_fake = coverage or _coverage(real, fake, k, real_radii)
    precision = bootstrap_mean(in_real.any(1).astype(np.float64), **kw)
    return precision, bootstrap(_recall(in_fake), len(fake), **kw)


def _recall(in_fake: np.ndarray):
    """The recall of a resample i (indices of generated samples): the share of real samples
    inside the ball of at least one drawn sample. A ball usually holds a few real samples:
    counting through a sparse matrix then reads those, not every real sample per draw."""
    if in_fake.mean() > 0.05:
        return lambda i: in_fake[np.unique(i)].any(0).mean()
    from scipy.sparse import csr_matrix

    cover = csr_matrix(in_fake.T)
    return lambda i: (cover @ np.bincount(i, minlength=len(in_fake)) > 0).mean()


def precision_recall_difference(fake_a, fake_b, real, k: int = 3, real_radii=None,
                                coverages=None, **kw) -> tuple[Estimate, Estimate]:
    """Paired differences (b - a) of precision and recall, resampling sample indices
    jointly; ``coverages``: both runs' `_coverage`, when already computed."""
    rr = _knn_radii(real, k) if real_radii is None and coverages is None else real_radii
    (ra, fa), (rb, fb) = coverages or (_coverage(real, fake_a, k, rr),
                                       _coverage(real, fake_b, k, rr))
    dp = rb.any(1).astype(np.float64) - ra.any(1).astype(np.float64)
    precision = bootstrap_mean(dp, **kw)
    recall_a, recall_b = _recall(fa), _recall(fb)
    recall = bootstrap(lambda i: recall_b(i) - recall_a(i), len(fake_a), **kw)
    return precision, recall


# -- Gaussian mixtures ---------------------------------------------------------------------------

def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(len(x), -1).double()


def mixture_log_likelihood(x, mixture, **kw) -> Estimate:
    """Average exact log-density of the samples under the data mixture (nats per sample)."""
    return bootstrap_mean(mixture.log_prob_data(x).numpy(), **kw)


def _energy_terms(x, mixture, n_ref: int, seed: int):
    """Per-sample mean distance to fresh mixture samples Y, the pairwise distances of the
    samples X, and the U statistic E|Y - Y'|: the parts of the energy distance."""
    from sklearn.metrics import pairwise_distances

    y, _ = mixture.sample(n_ref, torch.Generator().manual_seed(seed + 12345))
    xf, yf = _flat(x).numpy(), y.double().numpy()
    yy = float(pairwise_distances(yf).sum()) / (n_ref * (n_ref - 1))
    return pairwise_distances(xf, yf).mean(1), pairwise_distances(xf), yy


def _energy(dxy: np.ndarray, dxx: np.ndarray, yy: float, i: np.ndarray) -> float:
    n = len(dxy)
    return 2 * dxy[i].mean() - dxx[np.ix_(i, i)].sum() / (n * (n - 1)) - yy


def energy_distance(x, mixture, n_ref: int = 2048, seed: int = 0, **kw) -> Estimate:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| to fresh mixture samples Y
    (U statistics: unbiased, 0 in expectation iff the distributions agree). CI from
    resampling the samples X."""
    dxy, dxx, yy = _energy_terms(x, mixture, n_ref, seed)
    return bootstrap(lambda i: _energy(dxy, dxx, yy, i), len(dxy), seed=seed, **kw)


def energy_distance_difference(x_a, x_b, mixture, n_ref: int = 2048, seed: int = 0,
                               **kw) -> Estimate:
    """Paired change b - a of the energy distance to the same fresh mixture samples: sample
    i of both runs is resampled together (runs that share seeds)."""
    _same_length(x_a, x_b)
    ta, tb = (_energy_terms(x, mixture, n_ref, seed) for x in (x_a, x_b))
    return bootstrap(lambda i: _energy(*tb, i) - _energy(*ta, i), len(ta[0]), seed=seed,
                     **kw)


def mode_shares(x, mixture) -> np.ndarray:
    """The share of samples whose most likely component is k, per component."""
    k = mixture.log_joint(_flat(x), 0.0, DATA_END).argmax(1)
    return torch.bincount(k, minlength=len(mixture.weights)).numpy() / len(k)


def mode_weights_tv(x, mixture) -> float:
    """Total variation between the samples' mode shares (`mode_shares`) and the mixture's
    weights: 0 when every mode gets its weight, 1 when all samples sit on modes of weight 0."""
    return float(0.5 * np.abs(mode_shares(x, mixture) - mixture.weights.numpy()).sum())


def mode_coverage(x, mixture, min_share: float = 0.25, quantile: float = 0.999) -> dict:
    """Which mixture components the samples reach.

    A sample lands on component k when k is its most likely component and it lies within
    k's `quantile` ball (|x - mu_k|^2 / std_k^2 below the chi-square quantile). A mode is
    covered when it holds at least `min_share` of its expected count (weight * N).
    Returns {"covered": share of modes covered, "on_mode": share of samples on a mode,
    "counts": samples per mode}.
    """
    from scipy.stats import chi2

    xf = _flat(x)
    d = xf.shape[1]
    k = mixture.log_joint(xf, 0.0, DATA_END).argmax(1)
    dist2 = ((xf - mixture.means[k]) ** 2).sum(1) / mixture.stds[k] ** 2
    on = dist2 <= chi2.ppf(quantile, d)
    counts = torch.bincount(k[on], minlength=len(mixture.weights)).numpy()
    expected = mixture.weights.numpy() * len(xf)
    return {"covered": float((counts >= min_share * expected).mean()),
            "on_mode": float(on.double().mean()), "counts": counts.tolist()}


# -- everything for one run, and paired differences ----------------------------------------------

def _wide_terms(space, f: np.ndarray) -> dict | None:
    """For an extractor space (`features.ExtractorSpace.terms`): the per-sample FD and KID
    values and the k-NN coverage of features ``f``. None otherwise."""
    return space.terms(f) if space.kind == "extractor" else None


def quality(samples, data, *, labels=None, space: FeatureSpace | None = None,
            n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The sample-quality numbers for one run against a `Dataset`: FD, precision, recall
    (always); accuracy for class-conditional digits; log-likelihood, energy distance and
    mode coverage for mixtures. Values are `Estimate`s except mode coverage (dict)."""
    space = space or feature_space(data)
    kw = {"n_boot": n_boot, "seed": seed}
    f = space(samples)
    terms = _wide_terms(space, f)
    if terms:
        out = {"fd": bootstrap_mean(terms["fd"], **kw), "kid": bootstrap_mean(terms["kid"], **kw)}
    else:
        out = {"fd": fd(f, space.reference, **kw)}
    out["precision"], out["recall"] = precision_recall(
        f, space.reference, real_radii=space.radii(), coverage=terms and terms["coverage"], **kw)
    if labels is not None and space.kind == "digits":
        out["accuracy"] = classifier_accuracy(samples, labels, space.net, **kw)
    if data.mixture is not None:
        out["log_likelihood"] = mixture_log_likelihood(samples, data.mixture, **kw)
        out["energy"] = energy_distance(samples, data.mixture, **kw)
        out["modes"] = mode_coverage(samples, data.mixture)
    return out


def quality_difference(samples_a, samples_b, data, *, labels=None,
                       space: FeatureSpace | None = None, n_boot: int = N_BOOT,
                       seed: int = 0) -> dict:
    """Paired differences b - a (same seeds: sample i pairs with sample i) of FD,
    precision, recall; accuracy when both runs asked for these `labels` (digits); and, for
    mixtures, log-likelihood."""
    space = space or feature_space(data)
    kw = {"n_boot": n_boot, "seed": seed}
    fa, fb = space(samples_a), space(samples_b)
    ta, tb = _wide_terms(space, fa), _wide_terms(space, fb)
    if ta:
        _same_length(fa, fb)
        out = {k: bootstrap_mean(tb[k] - ta[k], **kw) for k in ("fd", "kid")}
    else:
        out = {"fd": fd_difference(fa, fb, space.reference, **kw)}
    out["precision"], out["recall"] = precision_recall_difference(
        fa, fb, space.reference, real_radii=space.radii(),
        coverages=ta and (ta["coverage"], tb["coverage"]), **kw)
    if labels is not None and space.kind == "digits":
        out["accuracy"] = bootstrap_mean(classifier_hits(samples_b, labels, space.net)
                                         - classifier_hits(samples_a, labels, space.net), **kw)
    if data.mixture is not None:
        mix = data.mixture
        ll = mix.log_prob_data(samples_b).numpy() - mix.log_prob_data(samples_a).numpy()
        out["log_likelihood"] = bootstrap_mean(ll, **kw)
    return out
