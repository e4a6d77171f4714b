"""Sanity checks on each run's samples: do they look like the data at all?

A sampler that diverged still gives numbers (FD in the millions, a shift meter pinned at
t' = 1), and a paired difference between two such numbers reads like a verdict. These checks
find such runs, so the report can warn at the top and give no verdict built on them.

Thresholds are deliberately loose: they catch samples that are not images of the data (std
many times the data's, values far outside its range, no sample near any data point), not
samples that are merely worse."""

from __future__ import annotations

import math

import numpy as np

MOMENT_RATIO = 3.0  # sample std more than 3x (or under 1/3 of) the data's
FD_SCALE = 10.0  # FD above 10x the trace of the data's feature covariance


def sample_problems(samples: np.ndarray, data_x: np.ndarray) -> list[str]:
    """What is wrong with these samples against the data's moments and range ([] = none)."""
    x = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(x).all():
        return ["samples hold NaN or Inf"]
    ref = np.asarray(data_x, dtype=np.float64)
    out = []
    s_std, d_std = x.std(), ref.std()
    if not (d_std / MOMENT_RATIO <= s_std <= MOMENT_RATIO * d_std):
        out.append(f"sample std {s_std:.3g} against the data's {d_std:.3g}")
    if abs(x.mean() - ref.mean()) > d_std:
        out.append(f"sample mean {x.mean():+.3g} against the data's {ref.mean():+.3g}")
    lo, hi = ref.min(), ref.max()
    span = hi - lo
    if x.min() < lo - span or x.max() > hi + span:
        out.append(f"values reach [{x.min():.3g}, {x.max():.3g}], the data "
                   f"[{lo:.3g}, {hi:.3g}]")
    return out


def quality_problems(q: dict, fd_scale: float) -> list[str]:
    """What the quality numbers of one run say is broken ([] = none). fd_scale: the trace of
    the data's feature covariance, FD's natural unit (a point mass at the data's mean)."""
    out = []
    for key, e in q.items():
        value = getattr(e, "value", e)
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key} is {value}")
    fd = getattr(q.get("fd"), "value", math.nan)
    if math.isfinite(fd) and fd > FD_SCALE * fd_scale:
        out.append(f"FD {fd:.3g} is over {FD_SCALE:g}x the data's own feature variance "
                   f"({fd_scale:.3g})")
    precision = getattr(q.get("precision"), "value", math.nan)
    if precision == 0.0:
        out.append("precision 0: no sample lies near any data point")
    return out


def warning(run: str, problems: list[str]) -> dict:
    """One entry of the report's warnings: {"run", "problem"}."""
    return {"run": run, "problem": "; ".join(problems)
            + ": the samples do not look like the data (diverged?); no verdict is built on "
              "this run's numbers"}
