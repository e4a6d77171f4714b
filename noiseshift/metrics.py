"""Sample quality, with bootstrap confidence intervals throughout.

- Fréchet distance (FD) in the penultimate features of a small digits classifier that the
  package trains itself (seeded, seconds on a CPU) and caches: no Inception, no download.
  Images of any side are resized to the classifier's side.
- Classifier accuracy against the requested class.
- k-NN precision and recall (Kynkäänniemi et al., 2019) in the same feature space.
- For Gaussian mixtures: exact average log-likelihood, energy distance to fresh samples, mode
  coverage.

Every number comes as an `Estimate` (value and percentile-bootstrap CI). Runs that share
seeds share their initial noise, so sample i of run A pairs with sample i of run B: the
differences (`*_difference`) resample sample indices jointly, which is what makes a small
improvement resolvable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import NoiseshiftError

N_BOOT = 200
LEVEL = 0.95

__all__ = [
    "DigitsClassifier",
    "Estimate",
    "FeatureSpace",
    "bootstrap",
    "classifier_accuracy",
    "digits_classifier",
    "energy_distance",
    "fd",
    "fd_difference",
    "feature_space",
    "frechet_distance",
    "gaussian_frechet",
    "mixture_log_likelihood",
    "mode_coverage",
    "precision_recall",
    "precision_recall_difference",
    "quality",
    "quality_difference",
    "train_digits_classifier",
]


# -- bootstrap ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A statistic with a percentile-bootstrap confidence interval."""

    value: float
    lo: float
    hi: float
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def bootstrap(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = N_BOOT,
              seed: int = 0, level: float = LEVEL) -> Estimate:
    """Bootstrap CI of stat(indices) over n samples: the value at all indices, and the
    percentile interval of n_boot resamples (with replacement) re-centred on that value.

    Re-centring removes what resampling itself adds: duplicated samples inflate FD (by
    several units in 64-d features) and cut recall, so a plain percentile interval would
    miss the value it is meant to bracket. For paired statistics of two runs, let stat apply
    the same indices to both."""
    value = float(stat(np.arange(n)))
    rng = np.random.default_rng(seed)
    reps = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(value, math.nan, math.nan, level)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]) - (np.median(reps) - value)
    return Estimate(value, float(lo), float(hi), level)


def _mean(values: np.ndarray, **kw) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda i: values[i].mean(), len(values), **kw)


# -- the digits classifier -----------------------------------------------------------------------

CLASSIFIER = {"side": 16, "channels": [16, 32], "features": 64, "steps": 400,
              "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0}
CLASSIFIER_FORMAT = "noiseshift.classifier"


class DigitsClassifier(nn.Module):
    """Two conv blocks and a 64-d penultimate layer. `features(x)` is what FD and
    precision/recall read; images of any side are resized to `side` first."""

    def __init__(self, side: int = 16, channels=(32, 64), features: int = 64,
                 classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.side = side
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, features),
        )
        # Features are read before this ReLU: after it, dead units leave the covariance
        # singular and hide whatever moves them below zero.
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(features, classes))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1:
            raise NoiseshiftError(f"the digits classifier reads (N, 1, H, W) images, got "
                                  f"{tuple(x.shape)}")
        if x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.side)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.resize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (padding with the background value -1)."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_digits_classifier(config: dict | None = None, progress=None) -> DigitsClassifier:
    """Train the classifier on the training split of the digits (seeded; the held-out split
    of `Dataset.split(0.2, seed=0)` is never seen)."""
    from .data import load_digits

    cfg = {**CLASSIFIER, **(config or {})}
    train, _ = load_digits(cfg["side"]).split(0.2, seed=0)
    gen = torch.Generator().manual_seed(cfg["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        net = DigitsClassifier(cfg["side"], cfg["channels"], cfg["features"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    net.train()
    for step in range(cfg["steps"]):
        idx = torch.randint(len(train), (cfg["batch_size"],), generator=gen)
        loss = F.cross_entropy(net(_shifted(train.x[idx], gen)), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, cfg["steps"], "training the digits classifier")
    net.info = {"config": cfg}
    return net.eval()


def digits_classifier(config: dict | None = None, progress=None) -> DigitsClassifier:
    """The feature network: loaded from `pretrained.cache_dir()`, or trained (seconds) and
    cached there on first use."""
    from .models import atomic_save, read_checkpoint
    from .defaults import cache_dir, recipe_key

    cfg = {**CLASSIFIER, **(config or {})}
    path = Path(cache_dir()) / f"digits-classifier-{recipe_key(cfg)}.pt"
    if path.exists():
        try:
            ckpt = read_checkpoint(path, CLASSIFIER_FORMAT)
            net = DigitsClassifier(cfg["side"], cfg["channels"], cfg["features"])
            net.load_state_dict(ckpt["state_dict"])
            net.info = {"config": cfg}
            return net.eval()
        except (NoiseshiftError, RuntimeError, KeyError):
            pass  # damaged or stale: train afresh
    net = train_digits_classifier(cfg, progress)
    atomic_save({"format": CLASSIFIER_FORMAT, "version": 1, "config": _json(cfg),
                 "state_dict": net.state_dict()}, path)
    return net


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


@torch.no_grad()
def _apply(fn, x, batch_size: int = 1024) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return torch.cat([fn(xb.float().cpu()) for xb in x.split(batch_size)]).double().numpy()


def classifier_accuracy(x, labels, classifier: DigitsClassifier | None = None,
                        **kw) -> Estimate:
    """Share of samples the classifier assigns to their requested class, with a CI."""
    return _mean(_hits(x, labels, classifier or digits_classifier()), **kw)


def _hits(x, labels, net: DigitsClassifier) -> np.ndarray:
    """1.0 where the classifier assigns a sample to its requested class, else 0.0."""
    pred = _apply(lambda b: net(b).argmax(1).double(), x)
    return (pred == np.asarray(labels).reshape(-1)).astype(np.float64)


# -- feature spaces ------------------------------------------------------------------------------

class FeatureSpace:
    """Maps samples to features and holds the reference (real data) features.

    "digits": the classifier's penultimate layer. Otherwise: the raw values when d <= 64, else
    the top 64 principal components of the reference data (sklearn PCA).
    """

    def __init__(self, reference, kind: str = "auto", classifier=None, dims: int = 64):
        reference = torch.as_tensor(reference)
        self.kind = kind
        if kind == "digits":
            self.net = classifier or digits_classifier()
            self._fn = lambda x: _apply(self.net.features, x)
        else:
            flat = reference.reshape(len(reference), -1).double().numpy()
            self._pca = None
            if flat.shape[1] > dims:
                from sklearn.decomposition import PCA

                self._pca = PCA(dims, random_state=0).fit(flat)
            self._fn = self._raw
        self.reference = self._fn(reference)
        self._radii: dict[int, np.ndarray] = {}

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


class _Reference:
    """Moments of the real features and the square root of their covariance, computed once:
    each bootstrap replicate then costs one covariance and one 64x64 eigendecomposition."""

    def __init__(self, real: np.ndarray):
        self.mu, self.cov = _stats(real)
        self.sqrt_cov = _sqrtm_psd(self.cov)
        self.trace = float(np.trace(self.cov))

    def distance(self, fake: np.ndarray) -> float:
        mu, cov = _stats(fake)
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(self.sqrt_cov @ cov @ self.sqrt_cov), 0,
                                None)).sum()
        return float(((mu - self.mu) ** 2).sum() + np.trace(cov) + self.trace - 2 * cross)


def fd(fake: np.ndarray, real: np.ndarray, **kw) -> Estimate:
    """FD of generated features to real ones. The CI resamples the generated samples; the
    real statistics are the fixed yardstick (as FID's are)."""
    ref = _Reference(real)
    return bootstrap(lambda i: ref.distance(fake[i]), len(fake), **kw)


def fd_difference(fake_a: np.ndarray, fake_b: np.ndarray, real: np.ndarray, **kw) -> Estimate:
    """FD(b) - FD(a) with a paired CI: sample i of run a and of run b are resampled together
    (same initial noise), both measured against the same real statistics."""
    if len(fake_a) != len(fake_b):
        raise NoiseshiftError(f"paired runs need the same number of samples, got "
                              f"{len(fake_a)} and {len(fake_b)}")
    ref = _Reference(real)
    return bootstrap(lambda i: ref.distance(fake_b[i]) - ref.distance(fake_a[i]),
                     len(fake_a), **kw)


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
                     **kw) -> tuple[Estimate, Estimate]:
    """Improved precision (share of generated samples inside the real manifold, the union of
    k-NN balls) and recall (share of real samples inside the generated manifold).

    CIs resample the generated set; the balls keep the radii of the full sets (a resample's
    duplicates would shrink k-NN radii to zero). `real_radii` (from `FeatureSpace.radii`)
    saves recomputing the real set's k-NN radii for every run."""
    in_real, in_fake = _coverage(real, fake, k, real_radii)
    precision = _mean(in_real.any(1).astype(np.float64), **kw)
    recall = bootstrap(lambda i: in_fake[np.unique(i)].any(0).mean(), len(fake), **kw)
    return precision, recall


def precision_recall_difference(fake_a, fake_b, real, k: int = 3, real_radii=None,
                                **kw) -> tuple[Estimate, Estimate]:
    """Paired differences (b - a) of precision and recall, resampling sample indices
    jointly."""
    rr = _knn_radii(real, k) if real_radii is None else real_radii
    ra, fa = _coverage(real, fake_a, k, rr)
    rb, fb = _coverage(real, fake_b, k, rr)
    dp = rb.any(1).astype(np.float64) - ra.any(1).astype(np.float64)
    precision = _mean(dp, **kw)
    recall = bootstrap(lambda i: fb[np.unique(i)].any(0).mean() - fa[np.unique(i)].any(0).mean(),
                       len(fake_a), **kw)
    return precision, recall


# -- Gaussian mixtures ---------------------------------------------------------------------------

def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(len(x), -1).double()


def _data_log_prob(x, mixture) -> np.ndarray:
    from .schedules import get_schedule

    # The linear schedule at t = 0 has alpha = 1, sigma = 0: p_0 is the data density itself
    # (under VE, t = 0 still carries sigma_min of noise).
    return mixture.log_prob(_flat(x), 0.0, get_schedule("linear")).numpy()


def mixture_log_likelihood(x, mixture, **kw) -> Estimate:
    """Average exact log-density of the samples under the data mixture (nats per sample)."""
    return _mean(_data_log_prob(x, mixture), **kw)


def energy_distance(x, mixture, n_ref: int = 2048, seed: int = 0, **kw) -> Estimate:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| to fresh mixture samples Y
    (U statistics: unbiased, 0 in expectation iff the distributions agree). CI from
    resampling the samples X."""
    from sklearn.metrics import pairwise_distances

    y, _ = mixture.sample(n_ref, torch.Generator().manual_seed(seed + 12345))
    xf, yf = _flat(x).numpy(), y.double().numpy()
    dxy = pairwise_distances(xf, yf).mean(1)
    dxx = pairwise_distances(xf)
    yy = float(pairwise_distances(yf).sum()) / (n_ref * (n_ref - 1))
    n = len(xf)

    def stat(i):
        return 2 * dxy[i].mean() - dxx[np.ix_(i, i)].sum() / (n * (n - 1)) - yy

    return bootstrap(stat, n, seed=seed, **kw)


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
    logj = torch.log(mixture.weights) + torch.stack([
        -0.5 * (((xf - mu) ** 2).sum(1) / s**2 + d * math.log(2 * math.pi * s**2))
        for mu, s in zip(mixture.means, mixture.stds, strict=True)], 1)
    k = logj.argmax(1)
    dist2 = ((xf - mixture.means[k]) ** 2).sum(1) / mixture.stds[k] ** 2
    on = dist2 <= chi2.ppf(quantile, d)
    counts = torch.bincount(k[on], minlength=len(mixture.weights)).numpy()
    expected = mixture.weights.numpy() * len(xf)
    return {"covered": float((counts >= min_share * expected).mean()),
            "on_mode": float(on.double().mean()), "counts": counts.tolist()}


# -- everything for one run, and paired differences ----------------------------------------------

def quality(samples, data, *, labels=None, space: FeatureSpace | None = None,
            n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The sample-quality numbers for one run against a `Dataset`: FD, precision, recall
    (always); accuracy for class-conditional digits; log-likelihood, energy distance and
    mode coverage for mixtures. Values are `Estimate`s except mode coverage (dict)."""
    space = space or feature_space(data)
    kw = {"n_boot": n_boot, "seed": seed}
    f = space(samples)
    out = {"fd": fd(f, space.reference, **kw)}
    out["precision"], out["recall"] = precision_recall(f, space.reference,
                                                       real_radii=space.radii(), **kw)
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
    out = {"fd": fd_difference(fa, fb, space.reference, **kw)}
    out["precision"], out["recall"] = precision_recall_difference(
        fa, fb, space.reference, real_radii=space.radii(), **kw)
    if labels is not None and space.kind == "digits":
        out["accuracy"] = _mean(_hits(samples_b, labels, space.net)
                                - _hits(samples_a, labels, space.net), **kw)
    if data.mixture is not None:
        ll = _data_log_prob(samples_b, data.mixture) - _data_log_prob(samples_a, data.mixture)
        out["log_likelihood"] = _mean(ll, **kw)
    return out
