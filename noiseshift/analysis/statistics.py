"""Every number with a confidence interval: `Estimate` and the percentile bootstrap.

Runs that share seeds share their initial noise, so sample i of run A pairs with sample i of
run B: paired statistics resample sample indices jointly (let the statistic apply the same
indices to both runs), which is what makes a small improvement resolvable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..defaults import N_BOOT

LEVEL = 0.95

__all__ = ["LEVEL", "N_BOOT", "Estimate", "bootstrap", "bootstrap_mean"]


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


def bootstrap_mean(values, **kw) -> Estimate:
    """The mean of per-sample values (N,) with its bootstrap CI (`bootstrap`'s options)."""
    values = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda i: values[i].mean(), len(values), **kw)
