"""Noise schedules and the conversions between model parametrisations.

Convention (fixed, see docs/trajectory-format.md): t in [0, 1], t = 0 is data, t = 1 is noise,
and a state is ``x_t = alpha(t) * x0 + sigma(t) * eps``.

A `Schedule` owns all of the schedule math, as SiT's path objects do: samplers, estimators and
guidance never re-derive alpha, sigma or a conversion. Every method accepts a Python float, a
numpy array or a torch tensor and answers in the same kind.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NoiseshiftError

if TYPE_CHECKING:
    import torch

PARAMETRISATIONS = ("velocity", "eps", "x0", "score")


def _is_tensor(t: Any) -> bool:
    # Without torch loaded nothing is a tensor: reading a trajectory file (`inspect`) uses
    # schedules on numpy alone and never pays for importing torch.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(t, torch.Tensor)


def _xp(t: Any):
    return sys.modules["torch"] if _is_tensor(t) else np


def _as_array(t: Any):
    return t if _is_tensor(t) else np.asarray(t, dtype=np.float64)


def expand_like(t: Any, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-sample (N,) t against a batch x of shape (N, ...)."""
    import torch

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

    def t_from_alpha(self, a):
        """The t at which alpha(t) = a (alpha decreases in t); a outside alpha's range maps
        to the nearest end."""
        raise NotImplementedError

    # -- the path ---------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps, with t a scalar or per-sample (N,); the
        coefficients are cast to x0's dtype (diffusers' `scheduler.add_noise`)."""
        import torch

        tt = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.float64)
        return expand_like(self.alpha(tt), x0) * x0 + expand_like(self.sigma(tt), x0) * eps

    def diffusion_g2(self, t, diffusion: float = 2.0):
        """g(t)^2 of the reverse SDE used by the stochastic samplers: diffusion * sigma(t)
        (2t under the linear schedule). Any g gives the ODE's marginals for an exact model."""
        return diffusion * self.sigma(t)

    def reverse_drift(self, out: torch.Tensor, src: str, x: torch.Tensor, t,
                      diffusion: float = 2.0) -> torch.Tensor:
        """The drift v - g^2/2 * score of the reverse SDE dx = [v - g^2/2 score] dt + g dW,
        from a model output in parametrisation `src` at (x, t), scalar t; in x's dtype."""
        g2 = float(self.diffusion_g2(float(t), diffusion))
        v = self.convert(out, src, "velocity", x, t).to(x.dtype)
        return v - 0.5 * g2 * self.convert(out, src, "score", x, t).to(x.dtype)

    # -- second moments ---------------------------------------------------------------------
    def second_moment(self, t, m2):
        """E|x_t|^2 per dimension when the data have per-dimension second moment m2."""
        t = _as_array(t)
        return self.alpha(t) ** 2 * m2 + self.sigma(t) ** 2

    def moment_slope(self, t, m2: float):
        """d/dt of the marginal second moment alpha^2 m2 + sigma^2 (per dimension)."""
        t = _as_array(t)
        return 2.0 * (self.alpha(t) * self.d_alpha(t) * m2 + self.sigma(t) * self.d_sigma(t))

    def moment_branches(self, m2: float, grid: int = 4097) -> np.ndarray:
        """Edges [0, t1, ..., 1] of the intervals on which the second moment is monotone in t.

        Under VP schedules and VE it is monotone (one branch) unless m2 == 1 under VP, where
        it is flat and says nothing. Under the linear schedule it has a minimum at
        t* = m2/(1+m2): below t* extra noise makes a state look *cleaner* by its moment.
        """
        tt = np.linspace(1e-9, 1.0, grid)  # VP-linear's sigma' is infinite at t = 0
        g = self.moment_slope(tt, m2)
        edges = [0.0]
        for i in np.nonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0)[0]:
            lo, hi = tt[i], tt[i + 1]
            for _ in range(60):  # bisect the sign change of the slope
                mid = 0.5 * (lo + hi)
                if np.sign(self.moment_slope(mid, m2)) == np.sign(g[i]):
                    lo = mid
                else:
                    hi = mid
            edges.append(0.5 * (lo + hi))
        return np.array(edges + [1.0])

    def t_from_second_moment(self, m, m2: float, t_near=None, iters: int = 80) -> np.ndarray:
        """The t at which the marginal second moment alpha^2 m2 + sigma^2 equals m (numpy).

        Solved by bisection on the monotone branch that holds `t_near` (default: the single
        branch, or the last one if there are several). An m beyond the branch's range maps
        to the branch's end: under the linear schedule that end is the moment's minimum t*,
        where the moment carries no information about t.
        """
        m = np.asarray(m, dtype=np.float64)
        edges = self.moment_branches(m2)
        near = np.full_like(m, edges[-2] if t_near is None else 0.5)
        if t_near is not None:
            near = np.broadcast_to(np.asarray(t_near, dtype=np.float64), m.shape)
        k = np.clip(np.searchsorted(edges, near, side="right") - 1, 0, len(edges) - 2)
        lo, hi = edges[k].copy(), edges[k + 1].copy()
        rising = self.second_moment(hi, m2) >= self.second_moment(lo, m2)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = (self.second_moment(mid, m2) < m) == rising  # the root is above mid
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def nearest_second_moment_t(self, m: torch.Tensor, candidates: torch.Tensor,
                                m2: float) -> torch.Tensor:
        """Of each row's candidate times (N, K), the one whose marginal second moment
        alpha^2 m2 + sigma^2 is nearest that row's m (N,): a search over a window of t, as
        time-shift sampling (Li et al., 2024) does, where `t_from_second_moment` solves."""
        import torch

        err = torch.as_tensor(self.second_moment(candidates, m2)) - m[:, None]
        return candidates.gather(1, err.abs().argmin(1, keepdim=True)).squeeze(1)

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
    import torch

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

    def t_from_alpha(self, a):
        return 1.0 - _xp(a).clip(_as_array(a), 0.0, 1.0)


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

    def t_from_alpha(self, a):
        xp = _xp(a)
        return (2.0 / math.pi) * xp.arccos(xp.clip(_as_array(a), 0.0, 1.0))


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

    def t_from_alpha(self, a):
        xp = _xp(a)
        return self._t_from_log_alpha(xp.log(xp.clip(_as_array(a), 1e-300, 1.0)))


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

    def t_from_alpha(self, a):
        return _as_array(a) * 0.0  # alpha = 1 everywhere: every t fits; the data end


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
