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

    def features(self) -> np.ndarray:
        return np.concatenate([np.concatenate(v) for v in self.feats.values()])

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
    d.seconds += time.perf_counter() - t0 - read_s[0]
    d.rows += counted.rows
    d.samples += hi - lo
    d.feats[seed].append(ctx.space(x.float().cpu()))
    if ctx.meter is not None:
        d.deltas[seed].append(np.stack(reads))
        d.t = np.asarray(ts)


def point_fd(d: Draws, ctx) -> float:
    return frechet_distance(d.features(), ctx.space.reference)


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
    """Every number of the table for ``d`` against ``base`` at the same n (paired)."""
    f, fb, ref = d.features(), base.features(), ctx.space.reference
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

