"""What every guidance wrapper shares: the `Guided` base, the constants, the row helpers.

A wrapper is itself a denoiser (same call, same attributes; see docs/architecture.md), so
every sampler runs every guidance and wrappers compose. Outputs are mixed and converted only
through ``Schedule.convert`` (in float64).
"""

from __future__ import annotations

import math

import torch

from ..errors import NoiseshiftError
from ..schedules import Schedule

# The uncapped score-space modes (estimator, estimator-noise, cf, cf-read, cf-read-control)
# apply for t in this interval unless told otherwise. Near t = 1 the score -> velocity
# factor t / (1 - t) is singular and p(t|x) is biased at the boundary: guiding t > 0.8 added
# +0.007 to +0.011 of spurious shift there on the default digits model, and at d = 64 on the
# exact mixture it cut the shift less (-49% against -64% at w = 2). Skipping t < 0.2 as well
# kept mixture samples better dispersed but lost the FD gain on digits, whose largest shift
# is at small t. Measured by bench/bench_guidance.py (--mixture, --digits).
UNCAPPED_INTERVAL = (0.0, 0.8)
FULL_INTERVAL = (0.0, 1.0)
LOW_DIM = 16
# The capped modes (see modes.py) guide over the whole range, with the score -> velocity
# factor (t / (1 - t) under the linear schedule) capped here instead of skipping t > 0.8.
DEFAULT_CAP = 4.0


class GuidanceWarning(UserWarning):
    """Guidance that runs but is likely to hurt (e.g. NAG on low-dimensional data)."""


# -- helpers --------------------------------------------------------------------------------

def _rows(t, x: torch.Tensor) -> torch.Tensor:
    """A per-row (N,) time tensor; keeps a tensor's dtype, makes floats float64."""
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.double()
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _mask(m, n: int, device) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool, device=device) if m is None else m.bool()


def _in_interval(t: torch.Tensor, interval) -> torch.Tensor:
    # Samplers pass float32 t: 0.8 arrives as 0.80000001, which must still count as 0.8.
    lo, hi = interval
    t = t.double()
    return (t >= lo - 1e-6) & (t <= hi + 1e-6)


def _interval(interval, default) -> tuple[float, float]:
    if interval is None:
        return tuple(default)
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise NoiseshiftError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {lo},{hi}")
    return lo, hi


def _regular(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Rows where alpha and sigma are both non-zero: elsewhere a score <-> output conversion
    is singular (the linear schedule's velocity at t = 1, any score at t = 0)."""
    t = t.double()
    a = torch.as_tensor(schedule.alpha(t)).abs()
    s = torch.as_tensor(schedule.sigma(t)).abs()
    return (a > 1e-12) & (s > 1e-12)


def velocity_gain(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """|d velocity / d score| per row at t (t / (1 - t) under the linear schedule): how far a
    unit change of the score moves the velocity a sampler steps with. Through
    ``Schedule.convert``, which is linear in the output when x = 0."""
    t = t.double()
    one = torch.ones(t.shape[0], 1, dtype=torch.float64, device=t.device)
    return schedule.convert(one, "score", "velocity", torch.zeros_like(one), t).abs().squeeze(1)


def _cap(cap) -> float | None:
    """A cap as stored: a float, or None for none (math.inf too)."""
    return None if cap is None or math.isinf(float(cap)) else float(cap)


def capped(schedule: Schedule, t: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Per-row factor (<= 1) on a score change so that the velocity changes by at most
    ``cap`` times it: min(gain, cap) / gain, with gain = `velocity_gain`; 1 for no cap."""
    ones = torch.ones(t.shape[0], dtype=torch.float64, device=t.device)
    if cap is None:
        return ones
    gain = velocity_gain(schedule, t)
    return torch.where(gain > cap, cap / gain.clamp_min(1e-300), ones)


def _index(v, idx):
    return None if v is None else v[idx]


def _take(y, n: int, device):
    """Class labels as an (n,) int64 tensor, or None."""
    if y is None:
        return None
    y = torch.as_tensor(y, dtype=torch.int64, device=device)
    return y.expand(n) if y.ndim == 0 else y


class Guided(torch.nn.Module):
    """Base for wrappers: the wrapped denoiser's attributes pass through."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def prediction(self) -> str:
        return self.model.prediction

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def supports_null_t(self) -> bool:
        return self.model.supports_null_t

    @property
    def mixture(self):
        return getattr(self.model, "mixture", None)

    @property
    def config(self) -> dict:
        """The wrapped model's config (so its shape and data still read off it) plus the
        guidance that wraps it."""
        return {**(getattr(self.model, "config", None) or {}), "guidance": self.describe()}

    def describe(self) -> dict:
        raise NotImplementedError

    def convert(self, out, src, dst, x, t):
        """Schedule.convert in float64: t / (1 - t) and 1 / sigma lose digits in float32."""
        return self.schedule.convert(out.double(), src, dst, x.double(), t)

    def at_level(self, x, t, level, moved, y=None, drop_t=None, drop_y=None):
        """The model's output with the rows ``moved`` fed ``level`` instead of t, their x0
        re-expressed at the scheduled t, so that any sampler steps from t as usual (the
        time-shift sampler and relabelling)."""
        if not bool(moved.any()):
            return self.model(x, t, y, drop_t, drop_y)
        level = torch.where(moved, level, t.double())
        out = self.model(x, level.to(t.dtype), y, drop_t, drop_y)
        i, p = moved.nonzero().squeeze(1), self.prediction
        x0 = self.convert(out[i], p, "x0", x[i], level[i])
        out = out.clone()
        out[i] = self.convert(x0, "x0", p, x[i], t[i]).to(out.dtype)
        return out
