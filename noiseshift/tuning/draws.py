"""One candidate's samples, drawn a slice at a time and scored.

Sample i of every candidate starts from the same noise and draws the same labels and
sampler noise (`sampling.IndexedNoise`), and the model sees the same fixed blocks of rows,
so a candidate's first n samples are the same whether it stops at n or goes on: a rung of
the search only draws the samples it adds, and every comparison is paired.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ..analysis.quality import (
    fd,
    fd_difference,
    frechet_distance,
    gaussian_frechet,
    precision_recall,
    precision_recall_difference,
)
from ..analysis.statistics import Estimate, bootstrap
from ..estimators import in_zones
from ..guidance import GuidanceWarning, build_guidance
from ..sampling import sample
from .candidates import Candidate


class Counted:
    """A denoiser that counts the rows it is called on: model evaluations, measured rather
    than assumed. Every other attribute is the model's."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def __call__(self, x, t, *args, **kw):
        self.rows += int(x.shape[0])
        return self.model(x, t, *args, **kw)


class Draws:
    """What one candidate has drawn so far, per seed: features (n, d) and, with a meter,
    the shift deltas (steps, n) with the step times; seconds spent sampling; model rows."""

    def __init__(self, candidate: Candidate, steps: int, seeds):
        self.candidate, self.steps = candidate, steps
        self.feats = {s: [] for s in seeds}
        self.deltas = {s: [] for s in seeds}
        self.t: np.ndarray | None = None
        self.seconds, self.rows, self.samples = 0.0, 0, 0

    @property
    def n(self) -> int:
        """Samples per seed."""
        first = next(iter(self.feats.values()))
        return sum(len(f) for f in first)

    def features(self, n: int | None = None) -> np.ndarray:
        """The first n (default all) samples' features of each seed, seed after seed."""
        return np.concatenate([np.concatenate(v)[:n] for v in self.feats.values()])

    def keep(self, seed: int, x, ctx, *, rows: int, seconds: float, reads=None, ts=None
             ) -> None:
        """Keep a drawn slice of seed ``seed``: the final states ``x`` (as features), the
        meter's readings per step (with a meter), the model rows it cost and the seconds
        spent sampling (the meter's excluded)."""
        self.seconds += seconds
        self.rows += rows
        self.samples += len(x)
        self.feats[seed].append(ctx.space(x.float().cpu()))
        if ctx.meter is not None:
            self.deltas[seed].append(np.stack(reads))
            self.t = np.asarray(ts)

    def delta(self) -> np.ndarray | None:
        if self.t is None:
            return None
        return np.concatenate([np.concatenate(v, axis=1) for v in self.deltas.values()], 1)


def draw(d: Draws, ctx, seed: int, lo: int, hi: int) -> None:
    """Draw samples lo..hi of seed ``seed`` for ``d``'s candidate (of ``ctx.n_total``) and
    keep their features and shift readings."""
    counted = Counted(ctx.model)
    with warnings.catch_warnings():
        # said once per search (`search.tune`'s notes), not once per draw
        warnings.simplefilter("ignore", GuidanceWarning)
        guided, _ = build_guidance(counted, estimator=ctx.estimator, data=ctx.data,
                                   **d.candidate.guidance)
    reads, ts = [], []
    read_s = [0.0]

    def on_step(info):
        t0 = time.perf_counter()
        ts.append(info["t"])
        reading = ctx.meter.predict(info["x"])[0].cpu().numpy()
        reads.append(reading - float(ctx.meter.reference(info["t"])))
        read_s[0] += time.perf_counter() - t0

    t0 = time.perf_counter()
    x = sample(guided, ctx.n_total, seed=seed, indices=range(lo, hi), block=ctx.block,
               device=ctx.device, callback=on_step if ctx.meter is not None else None,
               **d.candidate.keywords(d.steps))
    d.keep(seed, x, ctx, rows=counted.rows, seconds=time.perf_counter() - t0 - read_s[0],
           reads=reads, ts=ts)


def point_fd(d: Draws, ctx) -> float:
    return frechet_distance(d.features(), ctx.space.reference)


def resolved_better(d: Draws, base: Draws, ctx) -> bool:
    """Whether d's FD change against the baseline at d's n is resolved below zero (the
    recommendation's test, `TuneResult.recommended`)."""
    if d is base:
        return True
    change = fd_difference(base.features(d.n), d.features(), ctx.space.reference,
                           n_boot=ctx.n_boot, seed=ctx.boot_seed)
    return change.hi < 0


def mean_abs_shift(d: Draws, ctx) -> Estimate | None:
    """Mean over the steps the meter can read of |the step's mean delta|, with a bootstrap
    CI over samples."""
    delta = d.delta()
    if delta is None:
        return None
    seen = delta[~in_zones(d.t, ctx.meter.blind_zones())]
    if not len(seen):
        return None
    return bootstrap(lambda i: float(np.abs(seen[:, i].mean(1)).mean()), seen.shape[1],
                     n_boot=ctx.n_boot, seed=ctx.boot_seed)


def score(d: Draws, base: Draws, ctx) -> dict:
    """Every number of the table for ``d`` against ``base`` at the same n (paired: the
    baseline's first d.n samples per seed)."""
    f, fb, ref = d.features(), base.features(d.n), ctx.space.reference
    kw = {"n_boot": ctx.n_boot, "seed": ctx.boot_seed}
    radii = ctx.space.radii()
    prec, rec = precision_recall(f, ref, real_radii=radii, **kw)
    same = d is base
    return {
        "fd": fd(f, ref, **kw),
        "dfd": None if same else fd_difference(fb, f, ref, **kw),
        "precision": prec, "recall": rec,
        "drecall": None if same else
        precision_recall_difference(fb, f, ref, real_radii=radii, **kw)[1],
        "shift": mean_abs_shift(d, ctx),
        "model_evals": d.rows / max(d.samples, 1),
        "s_per_sample": d.seconds / max(d.samples, 1),
        "s_per_step": d.seconds / max(d.samples, 1) / d.steps,
    }



#: Bootstrap resamples behind `fd_estimate`'s bias correction and spread: the correction's
#: own noise is its spread / sqrt(BIAS_BOOT), a few percent of the estimate's.
BIAS_BOOT = 30


def paired_spread(d: Draws, k: Draws) -> float:
    """Total variance of the per-sample feature difference between ``d`` and ``k`` over
    d's samples: what the control-variate estimate through ``k`` is noisy by."""
    diff = d.features() - k.features(d.n)
    return float(diff.var(0).sum())


def fd_estimate(d: Draws, k: Draws, ctx, *, boots: int = BIAS_BOOT) -> Estimate:
    """FD of ``d`` at the n ``k`` was drawn to, from d's fewer samples: k's feature mean and
    covariance plus the paired difference of d's and k's over d's samples (a control
    variate: sample i of both starts from the same noise, so the difference is far less
    noisy than either). What is left is FD's finite-sample bias of the difference term,
    removed with the bootstrap's, scaled by 1 - n/N (the difference's variance is
    (1/n - 1/N) of a sample's; a bootstrap of the n pairs has 1/n). CI: +-1.96 bootstrap
    SDs, likewise scaled."""
    a, b, full = d.features(), k.features(d.n), k.features()
    ref = ctx.space.reference
    ref_mu, ref_cov = ref.mean(0), np.cov(ref, rowvar=False)

    def at(i):
        mu, cov = _shifted_moments(full, a[i], b[i])
        # the reference first: its square root is the PSD one, cov may not be PSD
        return gaussian_frechet(ref_mu, ref_cov, mu, cov)

    rng = np.random.default_rng(ctx.boot_seed)
    value = at(np.arange(len(a)))
    reps = np.array([at(rng.integers(0, len(a), len(a))) for _ in range(boots)])
    shrink = 1 - len(a) / len(full)
    value -= (reps.mean() - value) * shrink
    half = 1.96 * reps.std() * np.sqrt(shrink)
    return Estimate(float(value), float(value - half), float(value + half))


def _shifted_moments(full: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Mean and covariance of ``full`` moved by the paired differences of a's and b's
    (covariances centred each on its own mean, so a candidate that differs from the
    control by a constant gets exactly the control's covariance)."""
    mu = full.mean(0) + a.mean(0) - b.mean(0)
    return mu, np.cov(full, rowvar=False) + np.cov(a, rowvar=False) - np.cov(b, rowvar=False)
