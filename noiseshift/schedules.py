"""Noise schedules and the conversions between model parametrisations.

Convention (fixed, see docs/trajectory-format.md): t in [0, 1], t = 0 is data, t = 1 is noise,
and a state is ``x_t = alpha(t) * x0 + sigma(t) * eps``.

A `Schedule` owns all of the schedule math, as SiT's path objects do: samplers, estimators and
guidance never re-derive alpha, sigma or a conversion. Every method accepts a Python float, a
numpy array or a torch tensor and answers in the same kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .errors import NoiseshiftError

PARAMETRISATIONS = ("velocity", "eps", "x0", "score")


def _xp(t: Any):
    return torch if isinstance(t, torch.Tensor) else np


def _as_array(t: Any):
    return t if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def expand_like(t: Any, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-sample (N,) t against a batch x of shape (N, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


class Schedule:
    """x_t = alpha(t) x0 + sigma(t) eps. Subclasses define alpha, sigma and their inverses."""

    name: str = ""

    # -- the schedule ---------------------------------------------------------------------
    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def d_alpha(self, t):
        raise NotImplementedError

    def d_sigma(self, t):
        raise NotImplementedError

    def log_snr(self, t):
        """lambda = log(alpha^2 / sigma^2), decreasing in t."""
        xp = _xp(t)
        t = _as_array(t)
        return 2.0 * (xp.log(self.alpha(t)) - xp.log(self.sigma(t)))

    def t_from_log_snr(self, lam):
        raise NotImplementedError

    def t_from_sigma(self, s):
        """The t at which sigma(t) = s; s outside sigma's range maps to the nearest end."""
        raise NotImplementedError

    def second_moment(self, t, m2):
        """E|x_t|^2 per dimension when the data have per-dimension second moment m2."""
        t = _as_array(t)
        return self.alpha(t) ** 2 * m2 + self.sigma(t) ** 2

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, **self._params()}

    def _params(self) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    # -- conversions between parametrisations ----------------------------------------------
    def to_x0_eps(self, out: torch.Tensor, src: str, x: torch.Tensor, t):
        """(x0, eps) implied by a model output `out` in parametrisation `src` at state x, t."""
        a, s = expand_like(self.alpha(_as_t(t, x)), x), expand_like(self.sigma(_as_t(t, x)), x)
        if src == "x0":
            return out, (x - a * out) / s
        if src in ("eps", "score"):
            eps = out if src == "eps" else -s * out
            return (x - s * eps) / a, eps
        if src == "velocity":
            tt = _as_t(t, x)
            da, ds = expand_like(self.d_alpha(tt), x), expand_like(self.d_sigma(tt), x)
            det = a * ds - s * da
            return (ds * x - s * out) / det, (a * out - da * x) / det
        raise NoiseshiftError(f"unknown parametrisation {src!r}; use one of {PARAMETRISATIONS}")

    def from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, dst: str, x: torch.Tensor, t):
        if dst == "x0":
            return x0
        if dst == "eps":
            return eps
        tt = _as_t(t, x)
        if dst == "score":
            return -eps / expand_like(self.sigma(tt), x)
        if dst == "velocity":
            return expand_like(self.d_alpha(tt), x) * x0 + expand_like(self.d_sigma(tt), x) * eps
        raise NoiseshiftError(f"unknown parametrisation {dst!r}; use one of {PARAMETRISATIONS}")

    def convert(self, out: torch.Tensor, src: str, dst: str, x: torch.Tensor, t) -> torch.Tensor:
        """Convert a model output between velocity, eps, x0 and score at state x, time t."""
        if src == dst:
            return out
        x0, eps = self.to_x0_eps(out, src, x, t)
        return self.from_x0_eps(x0, eps, dst, x, t)


def _as_t(t, x: torch.Tensor) -> torch.Tensor:
    # Schedule math in float64: at the ends (alpha -> 0, sigma -> 0) float32 loses the answer.
    return torch.as_tensor(t, dtype=torch.float64, device=x.device)


class LinearSchedule(Schedule):
    """The linear interpolant of rectified flow and SiT: alpha = 1 - t, sigma = t."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - _as_array(t)

    def sigma(self, t):
        return _as_array(t) * 1.0

    def d_alpha(self, t):
        return _as_array(t) * 0.0 - 1.0

    def d_sigma(self, t):
        return _as_array(t) * 0.0 + 1.0

    def t_from_log_snr(self, lam):
        xp = _xp(lam)
        lam = _as_array(lam)
        return 1.0 / (1.0 + xp.exp(lam / 2.0))

    def t_from_sigma(self, s):
        xp = _xp(s)
        return xp.clip(_as_array(s), 0.0, 1.0)


class VPCosineSchedule(Schedule):
    """Variance preserving, alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    name = "vp-cosine"

    def alpha(self, t):
        return _xp(t).cos(0.5 * math.pi * _as_array(t))

    def sigma(self, t):
        return _xp(t).sin(0.5 * math.pi * _as_array(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * self.sigma(t)

    def d_sigma(self, t):
        return 0.5 * math.pi * self.alpha(t)

    def t_from_log_snr(self, lam):
        xp = _xp(lam)
        return (2.0 / math.pi) * xp.arctan(xp.exp(-_as_array(lam) / 2.0))

    def t_from_sigma(self, s):
        xp = _xp(s)
        return (2.0 / math.pi) * xp.arcsin(xp.clip(_as_array(s), 0.0, 1.0))


class VPLinearSchedule(Schedule):
    """DDPM's linear beta schedule in continuous form: beta(t) = b0 + t (b1 - b0),
    alpha = exp(-1/2 int_0^t beta), sigma = sqrt(1 - alpha^2)."""

    name = "vp-linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _log_alpha(self, t):
        t = _as_array(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return _xp(t).exp(self._log_alpha(t))

    def sigma(self, t):
        xp = _xp(t)
        return xp.sqrt(-xp.expm1(2.0 * self._log_alpha(t)))

    def d_alpha(self, t):
        beta = self.beta_min + _as_array(t) * (self.beta_max - self.beta_min)
        return -0.5 * beta * self.alpha(t)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def _t_from_log_alpha(self, la):
        xp = _xp(la)
        d = self.beta_max - self.beta_min
        t = (-0.5 * self.beta_min + xp.sqrt(0.25 * self.beta_min**2 - d * la)) / (0.5 * d)
        return xp.clip(t, 0.0, 1.0)

    def t_from_log_snr(self, lam):
        xp = _xp(lam)
        lam = _as_array(lam)
        # alpha^2 = sigmoid(lam), written to stay finite for large |lam|.
        la = -0.5 * (xp.log1p(xp.exp(-xp.abs(lam))) + xp.clip(-lam, 0.0, None))
        return self._t_from_log_alpha(la)

    def t_from_sigma(self, s):
        xp = _xp(s)
        s = xp.clip(_as_array(s), 0.0, float(self.sigma(1.0)))
        return self._t_from_log_alpha(0.5 * xp.log1p(-(s**2)))


class VESchedule(Schedule):
    """Variance exploding (VE-SDE / EDM range): alpha = 1, sigma geometric from
    sigma_min at t = 0 to sigma_max at t = 1."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def alpha(self, t):
        return _as_array(t) * 0.0 + 1.0

    def sigma(self, t):
        return self.sigma_min * _xp(t).exp(self._log_ratio * _as_array(t))

    def d_alpha(self, t):
        return _as_array(t) * 0.0

    def d_sigma(self, t):
        return self._log_ratio * self.sigma(t)

    def t_from_log_snr(self, lam):
        return self.t_from_sigma(_xp(lam).exp(-_as_array(lam) / 2.0))

    def t_from_sigma(self, s):
        xp = _xp(s)
        s = xp.clip(_as_array(s), self.sigma_min, self.sigma_max)
        return xp.log(s / self.sigma_min) / self._log_ratio


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LinearSchedule, VPCosineSchedule, VPLinearSchedule, VESchedule)
}


def get_schedule(spec: str | dict | Schedule) -> Schedule:
    """A schedule from its name, its `to_dict()` form, or itself."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or spec.get("name") not in SCHEDULES:
        name = spec.get("name") if isinstance(spec, dict) else spec
        raise NoiseshiftError(f"unknown schedule {name!r}; use one of {sorted(SCHEDULES)}")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        return SCHEDULES[spec["name"]](**params)
    except TypeError as e:
        raise NoiseshiftError(f"bad parameters for schedule {spec['name']!r}: {params}") from e
