"""Guidance: wrappers that turn a denoiser into a guided denoiser, and a probe of t-trust.

Every wrapper is itself a denoiser (same call, same attributes; see docs/architecture.md), so
every sampler runs every guidance and wrappers compose:

- `ClassifierFreeGuidance`: CFG on the class axis and classifier-free NAG (Zhong et al., 2025)
  on the noise axis, ``v(x|t,c) + w_cfg [v(x|t,c) - v(x|t,0c)] + w_nag [v(x|t,c) - v(x|0t,c)]``,
  all branches in one batched forward pass. With ``read=estimator`` the NAG branch is turned
  into a score at the estimator's reading t' of the state instead of at the scheduled t
  (``cf-read``); with ``control=True`` that branch is the *conditional* output read at t'.
- `EstimatorGradientNAG`: ``score(x|t) + w grad_x log p(t|x)`` from a noise-level
  estimator's posterior; works on any denoiser.
- `EpsScaling` (Ning et al., ICLR 2024) and `TimeShift` (Li et al., ICLR 2024): the peers.
- `build_guidance` builds any combination from CLI-style options; `run_name` names the run.
- `probe`: does a model read its noise level from its t input or from x?

Outputs are mixed and converted only through ``Schedule.convert`` (in float64).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import NoiseshiftError
from .schedules import Schedule, expand_like, get_schedule

# NAG applies for t in this interval unless told otherwise. Near t = 1 the score -> velocity
# factor t / (1 - t) is singular and p(t|x) is biased at the boundary: guiding t > 0.8 added
# +0.007 to +0.011 of spurious shift there on the default digits model, and at d = 64 on the
# exact mixture it cut the shift less (-49% against -64% at w = 2). Skipping t < 0.2 as well
# kept mixture samples better dispersed but lost the FD gain on digits, whose largest shift
# is at small t. Measured by bench/bench_guidance.py (--mixture, --digits).
DEFAULT_INTERVAL = (0.0, 0.8)
FULL_INTERVAL = (0.0, 1.0)
LOW_DIM = 16
NAG_MODES = ("estimator", "estimator-noise", "cf", "cf-read", "cf-read-control")
# The mode that helped on the default digits model: the shift shrinks (as the independent
# subspace oracle reads it) and FD improves a little; plain "estimator" shrinks the shift as
# much but its content-editing gradient makes FD much worse (bench/bench_guidance.py --digits).
DEFAULT_NAG_MODE = "estimator-noise"
# Estimator readings are clipped away from t = 0, where sigma -> 0 makes a score infinite.
_T_READ_MIN = 1e-3

NO_NULL_T = (
    "this model was trained without noise-condition dropout, so it has no null-t branch for "
    "--nag-mode {mode}: train one with `noiseshift train --t-dropout 0.3`, or use "
    "--nag-mode estimator-noise, which needs no retraining"
)


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


def low_dim_warning(dim: int) -> str | None:
    """The warning for NAG on low-dimensional data, or None."""
    if dim > LOW_DIM:
        return None
    return (f"NAG on {dim}-dimensional data: p(t|x) is broad there and NAG tends to hurt (on "
            f"a 2-d mixture it raised the shift and collapsed samples onto the modes); "
            f"compare shift and sample quality with the unguided run")


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


# -- posteriors over t ----------------------------------------------------------------------

def interpolate_log_posterior(grid: torch.Tensor, logp: torch.Tensor, t: torch.Tensor):
    """log p(t|x) at per-row t, linear in t between grid points (clamped at the ends)."""
    grid = grid.to(device=logp.device, dtype=logp.dtype)
    t = t.to(device=logp.device, dtype=logp.dtype)
    hi = torch.searchsorted(grid, t.contiguous()).clamp(1, grid.numel() - 1)
    lo = hi - 1
    w = ((t - grid[lo]) / (grid[hi] - grid[lo])).clamp(0.0, 1.0)
    rows = torch.arange(logp.shape[0], device=logp.device)
    return (1 - w) * logp[rows, lo] + w * logp[rows, hi]


def grad_log_posterior(estimator, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad_x log p(t|x) at the scheduled t of each row, as float64.

    Uses ``estimator.grad_log_posterior`` when there is one, else differentiates
    ``estimator.log_posterior`` interpolated at t. Works inside a sampler's no-grad or
    inference-mode context.
    """
    if hasattr(estimator, "grad_log_posterior"):
        return torch.as_tensor(estimator.grad_log_posterior(x, t)).to(x.device).double()
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        grid, logp = estimator.log_posterior(xg)
        lp = interpolate_log_posterior(torch.as_tensor(grid), logp, t.detach().clone())
        (g,) = torch.autograd.grad(lp.sum(), xg)
    return g.double()


def read_t(estimator, x: torch.Tensor) -> torch.Tensor:
    """The estimator's calibrated reading t' of each row, float64, clipped to (0, 1]."""
    t_hat = estimator.predict(x)[0]
    t_hat = torch.as_tensor(np.asarray(t_hat) if not torch.is_tensor(t_hat) else t_hat)
    return t_hat.to(x.device, torch.float64).reshape(-1).clamp(_T_READ_MIN, 1.0)


# -- classifier-free: CFG, CF-NAG, estimator-read NAG ----------------------------------------

class ClassifierFreeGuidance(Guided):
    """``out(x|t,c) + w_cfg [out(x|t,c) - out(x|t,0c)] + w_nag [out(x|t,c) - out(x|0t,c)]``.

    All branches go through the wrapped model in one batched call; rows outside a term's
    interval (or already dropped by the caller) skip that term and its extra forward rows.
    Without ``read`` the terms mix network outputs as published. With ``read`` (an estimator)
    the NAG term mixes in score space, its branch converted at the estimator's reading t' of x
    rather than at t; ``control=True`` uses the conditional output there, with no
    null-t branch, to show where the correcting signal comes from.
    """

    def __init__(self, model, *, cfg_scale: float = 0.0, nag_scale: float = 0.0,
                 cfg_interval=None, nag_interval=None, read=None, control: bool = False):
        super().__init__(model)
        self.cfg_scale, self.nag_scale = float(cfg_scale), float(nag_scale)
        self.cfg_interval = _interval(cfg_interval, FULL_INTERVAL)
        self.nag_interval = _interval(nag_interval, DEFAULT_INTERVAL)
        self.read, self.control = read, bool(control)
        if control and read is None:
            raise NoiseshiftError("the cf-read control needs an estimator to read t'")
        if self.cfg_scale and not model.num_classes:
            raise NoiseshiftError("--cfg-scale needs a class-conditional model; this one has "
                                  "no classes")
        if self.nag_scale and not control and not model.supports_null_t:
            mode = "cf" if read is None else "cf-read"
            raise NoiseshiftError(NO_NULL_T.format(mode=mode))

    @property
    def mode(self) -> str:
        return "cf" if self.read is None else ("cf-read-control" if self.control else "cf-read")

    def describe(self) -> dict:
        out = {}
        if self.cfg_scale:
            out["cfg"] = {"scale": self.cfg_scale, "interval": list(self.cfg_interval)}
        if self.nag_scale:
            out["nag"] = {"scale": self.nag_scale, "mode": self.mode,
                          "interval": list(self.nag_interval)}
        return out

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        n = x.shape[0]
        t = _rows(t, x)
        y = _take(y, n, x.device)
        dt, dy = _mask(drop_t, n, x.device), _mask(drop_y, n, x.device)
        nag_rows = _in_interval(t, self.nag_interval) & ~dt
        if self.read is not None:  # mixes in score space
            nag_rows &= _regular(self.schedule, t)
        w_nag = self.nag_scale * nag_rows
        w_cfg = self.cfg_scale * (_in_interval(t, self.cfg_interval) & ~dy)
        i_nag = (w_nag != 0).nonzero().squeeze(1)
        i_cfg = (w_cfg != 0).nonzero().squeeze(1)
        if i_nag.numel() == 0 and i_cfg.numel() == 0:
            return self.model(x, t, y, drop_t, drop_y)
        if self.cfg_scale and y is None:
            raise NoiseshiftError("classifier-free guidance needs class labels y")
        null_t_rows = i_nag if self.read is None or not self.control else i_nag[:0]
        idx = torch.cat([torch.arange(n, device=x.device), null_t_rows, i_cfg])
        ones = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
        k_nag = null_t_rows.numel()
        bt = torch.cat([dt, ones[:k_nag], dt[i_cfg]])
        by = torch.cat([dy, dy[null_t_rows], ones[:i_cfg.numel()]])
        out = self.model(x[idx], t[idx], _index(y, idx), bt, by)
        cond, nul_t, nul_c = out[:n], out[n:n + k_nag], out[n + k_nag:]
        if self.read is None:
            return self._mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag, i_cfg)
        out = self._mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag[:0], i_cfg)
        return self._read_nag(x, t, out, cond, nul_t, w_nag, i_nag)

    @staticmethod
    def _mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag, i_cfg):
        out = cond.clone()
        if i_cfg.numel():
            out[i_cfg] += expand_like(w_cfg[i_cfg], cond) * (cond[i_cfg] - nul_c)
        if i_nag.numel():
            out[i_nag] += expand_like(w_nag[i_nag], cond) * (cond[i_nag] - nul_t)
        return out

    def _read_nag(self, x, t, out, cond, nul_t, w_nag, i):
        """The NAG term in score space, its branch read at t' (CFG, if any, is in `out`)."""
        if not i.numel():
            return out
        xi, ti, p = x[i], t[i], self.prediction
        s = self.convert(out[i], p, "score", xi, ti)
        s_c = self.convert(cond[i], p, "score", xi, ti)
        branch = cond[i] if self.control else nul_t
        s_r = self.convert(branch, p, "score", xi, read_t(self.read, xi))
        s = s + expand_like(w_nag[i].double(), s) * (s_c - s_r)
        out = out.clone()
        out[i] = self.convert(s, "score", p, xi, ti).to(out.dtype)
        return out


# -- estimator-gradient NAG -----------------------------------------------------------------

class EstimatorGradientNAG(Guided):
    """``score(x|t) + w grad_x log p(t|x)`` with p(t|x) from a noise-level estimator.

    grad log p(t|x) = score(x|t) - score(x), so with the exact posterior this is exactly
    classifier-free NAG in score space; with a learned estimator it needs no null-t branch and
    no retraining.

    ``project=True`` (mode ``estimator-noise``) keeps only the gradient's component along the
    model's predicted noise eps_hat(x, t), so guidance changes how much noise the state
    carries and nothing else. A learned estimator's input gradient also has components in
    the data's directions (it reads image content to place t), and following those edits
    the content: on the default digits model that made FD worse at every scale.
    """

    def __init__(self, model, estimator, *, scale: float, interval=None,
                 project: bool = False):
        super().__init__(model)
        self.estimator, self.scale, self.project = estimator, float(scale), bool(project)
        self.interval = _interval(interval, DEFAULT_INTERVAL)

    @property
    def mode(self) -> str:
        return "estimator-noise" if self.project else "estimator"

    def describe(self) -> dict:
        inner = self.model.describe() if isinstance(self.model, Guided) else {}
        return {**inner, "nag": {"scale": self.scale, "mode": self.mode,
                                 "interval": list(self.interval)}}

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        out = self.model(x, t, y, drop_t, drop_y)
        t = _rows(t, x)
        rows = _in_interval(t, self.interval) & ~_mask(drop_t, x.shape[0], x.device)
        rows &= _regular(self.schedule, t)
        if not self.scale or not bool(rows.any()):
            return out
        i = rows.nonzero().squeeze(1)
        xi, ti, p = x[i], t[i], self.prediction
        s = self.convert(out[i], p, "score", xi, ti)
        g = grad_log_posterior(self.estimator, xi, ti).reshape(s.shape)
        if self.project:
            g = _project(g, self.convert(out[i], p, "eps", xi, ti))
        out = out.clone()
        out[i] = self.convert(s + self.scale * g, "score", p, xi, ti).to(out.dtype)
        return out


def _project(g: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each row of g projected on the same row of direction."""
    d = direction.flatten(1)
    coef = (g.flatten(1) * d).sum(1) / (d * d).sum(1).clamp_min(1e-30)
    return (coef[:, None] * d).reshape(g.shape)


# -- peers ----------------------------------------------------------------------------------

class EpsScaling(Guided):
    """Epsilon scaling (Ning et al., ICLR 2024): the predicted eps divided by
    lambda_t = slope * t + scale, with x0 re-derived from x so the pair stays consistent.

    Rows where alpha(t) = 0 (pure noise, e.g. t = 1 on the linear schedule) are left alone:
    there x0 is not determined by x and the scaled eps cannot be turned back into an output.
    Likewise for sigma(t) = 0.
    """

    def __init__(self, model, *, scale: float, slope: float = 0.0, interval=None):
        super().__init__(model)
        self.scale, self.slope = float(scale), float(slope)
        self.interval = _interval(interval, FULL_INTERVAL)
        if self.scale <= 0 or self.scale + self.slope <= 0:
            raise NoiseshiftError(f"eps scale lambda_t = {self.slope} t + {self.scale} must "
                                  f"stay positive on [0, 1]")

    def describe(self) -> dict:
        return {"eps_scale": {"scale": self.scale, "slope": self.slope,
                              "interval": list(self.interval)}}

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        out = self.model(x, t, y, drop_t, drop_y)
        t = _rows(t, x)
        rows = _in_interval(t, self.interval) & _regular(self.schedule, t)
        if not bool(rows.any()) or (self.scale == 1.0 and self.slope == 0.0):
            return out
        i = rows.nonzero().squeeze(1)
        xi, ti, p = x[i], t[i], self.prediction
        lam = self.slope * ti.double() + self.scale
        eps = self.convert(out[i], p, "eps", xi, ti) / expand_like(lam, xi.double())
        out = out.clone()
        out[i] = self.convert(eps, "eps", p, xi, ti).to(out.dtype)
        return out


class TimeShift(Guided):
    """The time-shift sampler (Li et al., ICLR 2024) as a wrapper.

    For rows with t > cutoff, the model is fed the t_s within [t - window/2, t + window/2]
    whose marginal second moment alpha^2 E[x0^2] + sigma^2 best matches the state's mean
    square. Its x0 prediction (the part that depends on reading the noise level right) is then
    re-expressed at the scheduled t, so any sampler can step from t as usual.
    """

    def __init__(self, model, *, window: float, cutoff: float, data_m2: float,
                 candidates: int = 65):
        super().__init__(model)
        self.window, self.cutoff, self.data_m2 = float(window), float(cutoff), float(data_m2)
        if not 0.0 < self.window <= 1.0 or not 0.0 <= self.cutoff < 1.0:
            raise NoiseshiftError(f"--time-shift WINDOW,CUTOFF needs 0 < WINDOW <= 1 and "
                                  f"0 <= CUTOFF < 1, got {self.window},{self.cutoff}")
        self.offsets = torch.linspace(-self.window / 2, self.window / 2, candidates,
                                      dtype=torch.float64)

    def describe(self) -> dict:
        return {"time_shift": {"window": self.window, "cutoff": self.cutoff,
                               "data_m2": self.data_m2}}

    def shifted_t(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """t_s for each row (t itself at or below the cutoff)."""
        t64 = t.double()
        m = x.double().reshape(x.shape[0], -1).pow(2).mean(1)
        cand = (t64[:, None] + self.offsets.to(x.device)).clamp(0.0, 1.0)  # (N, K)
        err = (torch.as_tensor(self.schedule.second_moment(cand, self.data_m2)) - m[:, None])
        best = cand.gather(1, err.abs().argmin(1, keepdim=True)).squeeze(1)
        return torch.where(t64 > self.cutoff, best, t64)

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = _rows(t, x)
        ts = self.shifted_t(x, t)
        moved = ts != t.double()
        if not bool(moved.any()):
            return self.model(x, t, y, drop_t, drop_y)
        out = self.model(x, ts.to(t.dtype), y, drop_t, drop_y)
        i, p = moved.nonzero().squeeze(1), self.prediction
        x0 = self.convert(out[i], p, "x0", x[i], ts[i])
        out = out.clone()
        out[i] = self.convert(x0, "x0", p, x[i], t[i]).to(out.dtype)
        return out


# -- building from options ------------------------------------------------------------------

def data_second_moment(data) -> float:
    """E|x0|^2 per dimension of a Dataset (exact for a mixture)."""
    if getattr(data, "mixture", None) is not None:
        return data.mixture.second_moment()
    return float(data.x.double().pow(2).mean())


def build_guidance(model, *, nag_scale: float = 0.0, nag_mode: str = DEFAULT_NAG_MODE,
                   cfg_scale: float = 0.0, eps_scale=None, time_shift=None, interval=None,
                   estimator=None, data=None):
    """A guided model from CLI-style options, and the JSON-able dict that describes it.

    nag_mode: "estimator" (gradient of the estimator's log p(t|x)), "estimator-noise" (that
    gradient projected on the predicted noise), "cf" (classifier-free, as published),
    "cf-read" (null-t branch read at the estimator's t'), "cf-read-control".
    eps_scale: lambda_t's constant b, or (b, k) for lambda_t = k t + b.
    time_shift: (window, cutoff); E|x0|^2 comes from ``data``, else the model's config.
    interval: (lo, hi) for every guidance term; default NAG in `DEFAULT_INTERVAL`, CFG and
    eps scaling everywhere.
    The dict has ``kind`` (the run name, "none" when unguided) and one entry per term. With
    nothing asked for, the model itself comes back. Warns (`GuidanceWarning`) for NAG on
    data of dimension <= 16.
    """
    if nag_mode not in NAG_MODES:
        raise NoiseshiftError(f"unknown --nag-mode {nag_mode!r}; use one of {NAG_MODES}")
    needs_est = bool(nag_scale) and nag_mode != "cf"
    if needs_est and estimator is None:
        raise NoiseshiftError(f"--nag-mode {nag_mode} needs a noise-level estimator")
    guided, desc = model, {}
    if time_shift is not None:
        window, cutoff = time_shift
        guided = TimeShift(guided, window=window, cutoff=cutoff,
                           data_m2=_data_m2(model, data))
        desc.update(guided.describe())
    if eps_scale is not None:
        b, k = (*np.atleast_1d(np.asarray(eps_scale, dtype=float)), 0.0)[:2]
        guided = EpsScaling(guided, scale=b, slope=k, interval=interval)
        desc.update(guided.describe())
    by_estimator = nag_mode.startswith("estimator")
    cf_nag = 0.0 if by_estimator else nag_scale
    if cfg_scale or cf_nag:
        guided = ClassifierFreeGuidance(
            guided, cfg_scale=cfg_scale, nag_scale=cf_nag, cfg_interval=interval,
            nag_interval=interval, read=estimator if nag_mode.startswith("cf-read") else None,
            control=nag_mode == "cf-read-control")
        desc.update(guided.describe())
    if nag_scale and by_estimator:
        guided = EstimatorGradientNAG(guided, estimator, scale=nag_scale, interval=interval,
                                      project=nag_mode == "estimator-noise")
        desc.update(guided.describe())
    if "nag" in desc:
        if needs_est:
            desc["nag"]["estimator"] = describe_estimator(estimator)
        dim = _dim(model, data)
        if dim is not None and low_dim_warning(dim):
            warnings.warn(low_dim_warning(dim), GuidanceWarning, stacklevel=2)
    desc = {"kind": run_name(desc) if desc else "none", **desc}
    return guided, desc


def _data_m2(model, data) -> float:
    if data is not None:
        return data_second_moment(data)
    cfg = getattr(model, "config", None) or {}
    if "data_m2" in cfg:
        return float(cfg["data_m2"])
    if getattr(model, "mixture", None) is not None:
        return model.mixture.second_moment()
    raise NoiseshiftError("--time-shift needs the data's second moment: pass the data")


def _dim(model, data) -> int | None:
    if data is not None:
        return int(data.dim)
    shape = (getattr(model, "config", None) or {}).get("shape")
    if shape is not None:
        return int(np.prod(shape))
    mixture = getattr(model, "mixture", None)
    return None if mixture is None else int(mixture.dim)


def describe_estimator(estimator) -> dict:
    """What identifies an estimator in a run's guidance attr."""
    out = {"kind": type(estimator).__name__}
    to_dict = getattr(estimator, "to_dict", None)
    if callable(to_dict):
        out.update(to_dict())
    path = getattr(estimator, "path", None)
    if path is not None:
        out["path"] = str(path)
    return out


def _num(v: float) -> str:
    return f"{float(v):g}"


def run_name(guidance: dict) -> str:
    """A run name from a guidance dict: 'unguided', 'nag-estimator-1.5', 'cfg-2+nag-cf-1',
    'eps-scale-1.004', 'time-shift-0.1-0.2'; a non-default interval adds '@lo-hi'."""
    parts: list[str] = []
    for key, default in (("cfg", FULL_INTERVAL), ("nag", DEFAULT_INTERVAL),
                         ("eps_scale", FULL_INTERVAL)):
        g = guidance.get(key)
        if not g:
            continue
        if key == "cfg":
            name = f"cfg-{_num(g['scale'])}"
        elif key == "nag":
            name = f"nag-{g['mode']}-{_num(g['scale'])}"
        else:
            name = f"eps-scale-{_num(g['scale'])}"
            if g.get("slope"):
                name += f"-slope-{_num(g['slope'])}"
        if tuple(g.get("interval", default)) != tuple(default):
            lo, hi = g["interval"]
            name += f"@{_num(lo)}-{_num(hi)}"
        parts.append(name)
    if guidance.get("time_shift"):
        ts = guidance["time_shift"]
        parts.append(f"time-shift-{_num(ts['window'])}-{_num(ts['cutoff'])}")
    return "+".join(parts) or "unguided"


# -- the probe ------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """Response gains of the branches on noise-only directions, one row per (t, rho)."""

    rows: list[dict]
    verdict: str
    trusts_t: float  # measured CF-NAG signal as a fraction of the ideal (1 = fully trusts t)
    directions: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "verdict": self.verdict, "trusts_t": self.trusts_t,
                "directions": self.directions, **self.info}


def noise_directions(data, max_dirs: int = 256):
    """An orthonormal basis (D, m) of directions holding (almost) no data, and the data's
    per-direction variance there.

    The data's known subspace gives its exact complement; otherwise the directions (of an
    uncentred SVD) with numerically zero energy; failing that, the quietest half of them,
    where the data's small energy c2 enters the ideal responses.
    """
    x = data.x.reshape(len(data), -1).double()
    d = x.shape[1]
    if data.subspace is not None:
        q = data.subspace.double()
        vals, vecs = torch.linalg.eigh(torch.eye(d, dtype=torch.float64) - q @ q.T)
        basis, kind = vecs[:, vals > 0.5], "complement of the data subspace"
    else:
        # Uncentred: the data mean is data too, and must not count as a noise direction.
        _, s, vh = torch.linalg.svd(x, full_matrices=True)
        energy = torch.zeros(d, dtype=torch.float64)
        energy[: s.numel()] = s**2 / x.shape[0]
        empty = energy <= 1e-10 * energy.max()
        if bool(empty.any()):
            basis, kind = vh[empty].T, "complement of the data span"
        else:
            basis, kind = vh[d - d // 2:].T, "quietest half of the principal directions"
    basis = basis[:, :max_dirs]
    return basis, float((x @ basis).pow(2).mean()), kind


def _linear_response(schedule: Schedule, prediction: str, t: float, c2: float) -> float:
    """Output per unit of x of the ideal denoiser at noise level t along a direction where
    the data have second moment c2: x0 = alpha c2 / v x, eps = sigma / v x, v = alpha^2 c2 +
    sigma^2."""
    t = torch.tensor([float(t)], dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    v = a**2 * c2 + s**2
    unit = torch.ones_like(t)
    return float(schedule.from_x0_eps(a * c2 / v, s / v, prediction, unit, t))


def probe(model, data, schedule=None, rhos=(0.1, 0.2, 0.3), ts=(0.2, 0.4, 0.6, 0.8),
          n: int = 256, seed: int = 0, device=None) -> ProbeResult:
    """Does ``model`` read its noise level from its t input or from x?

    States are truly noised to t' = t (1 + rho) while the model is told t. On noise-only
    directions P, the gain of a branch is <P out, P x> / (r(t) |P x|^2), where r(t) is the
    response of the ideal denoiser at t: a model that trusts t has conditional gain 1, and an
    exact null-t branch (which can only read x) has gain r(t')/r(t) (= t/t' for velocity or eps
    under the linear schedule). Classifier-free NAG's correcting signal is proportional to
    the difference of the two gains, so its ideal is 1 - r(t')/r(t).
    """
    schedule = get_schedule(schedule or model.schedule)
    if model.prediction == "x0":
        raise NoiseshiftError("an x0-predicting model has no response on noise-only "
                              "directions; the probe needs velocity, eps or score")
    device = torch.device(device) if device else next(
        (p.device for p in getattr(model, "parameters", lambda: iter(()))()),
        torch.device("cpu"))
    basis, c2, kind = noise_directions(data)
    basis = basis.to(device)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (n,), generator=g)
    x0 = data.x[idx].double()
    y = None
    if model.num_classes and data.labels is not None:
        y = data.labels[idx].clamp(max=model.num_classes - 1).to(device)
    null = bool(model.supports_null_t)
    rows = []
    for t in ts:
        for rho in rhos:
            tp = min(1.0, t * (1 + rho))
            eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            x = (float(schedule.alpha(tp)) * x0 + float(schedule.sigma(tp)) * eps).float()
            rows.append(_probe_cell(model, schedule, x.to(device), y, t, tp, rho, basis, c2,
                                    null))
    return _verdict(rows, kind, c2, null)


def _probe_cell(model, schedule, x, y, t, tp, rho, basis, c2, null):
    n = x.shape[0]
    reps = 2 if null else 1
    tt = torch.full((reps * n,), float(t), dtype=torch.float64, device=x.device)
    drop_t = torch.arange(reps * n, device=x.device) >= n
    yy = None if y is None else y.repeat(reps)
    with torch.no_grad():
        out = model(x.repeat(reps, *([1] * (x.ndim - 1))), tt, yy, drop_t, None)
    px = x.reshape(n, -1).double() @ basis
    po = out.reshape(reps * n, -1).double() @ basis
    r_t = _linear_response(schedule, model.prediction, t, c2)
    r_tp = _linear_response(schedule, model.prediction, tp, c2)
    denom = r_t * float((px * px).sum())
    gains = [float((po[k * n:(k + 1) * n] * px).sum()) / denom for k in range(reps)]
    ideal_null = r_tp / r_t
    row = {"t": float(t), "rho": float(rho), "t_true": tp, "gain_cond": gains[0],
           "ideal_null": ideal_null, "ideal_signal": 1.0 - ideal_null}
    if null:
        row.update(gain_null=gains[1], signal=gains[0] - gains[1])
    return row


def _signal_fraction(rows, null) -> float:
    """Measured CF-NAG signal over the ideal one, pooled over rows. Without a null-t branch
    the conditional gain is placed between the two pure cases, 1 (trusts t) and an
    x-reader's gain."""
    ideal = sum(r["ideal_signal"] for r in rows)
    got = sum(r["signal"] if null else r["gain_cond"] - r["ideal_null"] for r in rows)
    return got / ideal


def _verdict(rows, kind, c2, null) -> ProbeResult:
    frac = _signal_fraction(rows, null)
    by_t = {t: _signal_fraction([r for r in rows if r["t"] == t], null)
            for t in sorted({r["t"] for r in rows})}
    pct = f"{100 * frac:.0f}%"
    if frac < 0.25:
        verdict = ("this model reads its noise level from x, not from t: classifier-free NAG "
                   f"will have little to correct with ({pct} of the ideal signal); use "
                   "--nag-mode estimator")
    elif frac < 0.6:
        verdict = (f"this model partly trusts its t input: classifier-free NAG gets {pct} of "
                   "the ideal correcting signal")
    else:
        verdict = ("this model trusts its t input: classifier-free NAG has a correcting signal "
                   f"to work with ({pct} of the ideal)")
    if len(by_t) > 1:
        verdict += " (by t: " + ", ".join(f"{t:g}: {100 * f:.0f}%" for t, f in by_t.items()) + ")"
    if not null:
        verdict += " (no null-t branch: measured on the conditional branch alone)"
    return ProbeResult(rows, verdict, frac, kind,
                       {"data_c2": c2, "null_t": null,
                        "trusts_t_by_t": {f"{t:g}": f for t, f in by_t.items()}})


__all__ = [
    "DEFAULT_INTERVAL", "DEFAULT_NAG_MODE", "NAG_MODES", "ClassifierFreeGuidance", "EpsScaling",
    "EstimatorGradientNAG", "Guided", "GuidanceWarning", "ProbeResult", "TimeShift",
    "build_guidance", "data_second_moment", "grad_log_posterior", "interpolate_log_posterior",
    "low_dim_warning", "noise_directions", "probe", "read_t", "run_name",
]
