"""The interface every noise-level estimator shares, and the calibration they all get.

An estimator reads the noise level t' a state carries. Its raw read-out is biased (toward the
middle near the ends for a posterior mean, by the data's own high frequencies for wavelet MAD),
so every estimator is calibrated the same way after `fit`: an isotonic map from raw read-out to
true t, fitted on held-out forward-noised states. The same held-out pass gives

- the reference curve, the mean calibrated reading of *true* x_t at each scheduled t, so that
  a shift is delta = t' - reference(t) and never a raw read-out minus t;
- the blind zones, where that curve is flat and a shift cannot be read.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression

from ..data import Dataset
from ..errors import CheckpointError, NoiseshiftError
from ..io.checkpoints import Wording, json_entry, read_checkpoint, save_checkpoint
from ..runtime import generator, resolve_device
from ..schedules import Schedule, get_schedule

FORMAT = "noiseshift.estimator"
VERSION = 1
BLIND_SLOPE = 0.3
CHECKPOINT_WORDING = Wording(
    missing="no such estimator file",
    folder="no such estimator file",
    unreadable="not a noiseshift estimator checkpoint ({error})",
    untagged="not a noiseshift estimator checkpoint (format is not {fmt!r})",
    other_format="not a noiseshift estimator checkpoint (format is not {fmt!r})",
    version="estimator checkpoint version {found!r}; this noiseshift reads version {version}",
)

#: name -> estimator class; filled in by subclassing, read by `load`.
ESTIMATORS: dict[str, type[NoiseLevelEstimator]] = {}


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for tensors (clamped at the ends), differentiable in x."""
    xp, fp = xp.to(x), fp.to(x)
    i = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)


def forward_noise(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule,
                  gen: torch.Generator) -> torch.Tensor:
    """True states x_t = alpha(t) x0 + sigma(t) eps, float32, noise from the CPU generator."""
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device)
    return schedule.add_noise(x0, eps, t.to(device=x0.device, dtype=torch.float64))


def posterior_moments(grid: torch.Tensor, logp: torch.Tensor):
    """(mean, std) over the grid of a posterior given as log-probabilities (N, G)."""
    p = logp.exp()
    mean = p @ grid
    return mean, (p @ grid**2 - mean**2).clamp_min(0.0).sqrt()


def interpolate_log_posterior(grid: torch.Tensor, logp: torch.Tensor, t: torch.Tensor):
    """log p(t|x) at per-row t, linear in t between grid points (clamped at the ends)."""
    grid = grid.to(device=logp.device, dtype=logp.dtype)
    t = t.to(device=logp.device, dtype=logp.dtype)
    hi = torch.searchsorted(grid, t.contiguous()).clamp(1, grid.numel() - 1)
    lo = hi - 1
    w = ((t - grid[lo]) / (grid[hi] - grid[lo])).clamp(0.0, 1.0)
    rows = torch.arange(logp.shape[0], device=logp.device)
    return (1 - w) * logp[rows, lo] + w * logp[rows, hi]


def log_posterior_grad(log_posterior, x: torch.Tensor, t) -> torch.Tensor:
    """grad_x log p(t|x) at scheduled t ((N,) or scalar) from ``log_posterior(x) -> (grid,
    log p (N, G))``, with log p interpolated linearly between grid points. In x's dtype;
    works inside a sampler's no-grad or inference-mode context."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        grid, logp = log_posterior(xg)
        tt = torch.as_tensor(t, dtype=logp.dtype, device=logp.device).detach().clone()
        lp = interpolate_log_posterior(torch.as_tensor(grid), logp, tt.expand(len(xg)))
        (grad,) = torch.autograd.grad(lp.sum(), xg)
    return grad


def _as_batch(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return torch.as_tensor(x, dtype=torch.float32)


class NoiseLevelEstimator(BaseEstimator):
    """Base class: `fit(data, schedule)`, `predict(x) -> (t_mean, t_std)`, `reference(t)`,
    `blind_zones()`, `score(x, t)`, `save(path)` / `load(path)`, `to_dict()`.

    Subclasses set `name` and implement `_fit(train, progress)` and `_raw(x)`, the raw
    read-out (mean, std or None) as float64 (N,) tensors for a float32 batch on the device.
    Parameters live in `__init__` (scikit-learn style); fitted state ends in an underscore.
    """

    name: ClassVar[str] = ""
    has_posterior: ClassVar[bool] = False
    #: Parameters a checkpoint saved before they existed was made with (`load` fills them in).
    LEGACY_PARAMS: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            ESTIMATORS[cls.name] = cls

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # A subclass's __init__ names its own parameters and hands the base's on through
        # **base (so their defaults are written once); scikit-learn reads one signature, so
        # gather the keyword parameters of every __init__ up the class chain.
        return sorted({p.name for k in cls.__mro__ if "__init__" in vars(k)
                       and issubclass(k, NoiseLevelEstimator)
                       for p in inspect.signature(k.__init__).parameters.values()
                       if p.kind is p.KEYWORD_ONLY})

    def __init__(self, *, calib_points: int = 50, calib_samples: int = 256,
                 held_out: float = 0.2, seed: int = 0, batch_size: int = 1024,
                 device: str = "auto"):
        self.calib_points = calib_points
        self.calib_samples = calib_samples
        self.held_out = held_out
        self.seed = seed
        self.batch_size = batch_size
        self.device = device

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, data: Dataset, schedule: Schedule | str | dict, progress=None):
        """Fit on a training split of `data`, then calibrate on the held-out split.

        `progress(info)` receives the training loop's per-step info ({"step", "steps",
        "loss"}) for estimators that train.
        """
        self.schedule_ = get_schedule(schedule)
        self.data_spec_ = dict(data.spec)
        self.shape_ = tuple(data.shape)
        self.device_ = resolve_device(self.device)
        train, held = data.split(self.held_out, seed=self.seed)
        self._fit(train, progress)
        self._calibrate(held)
        return self

    def _fit(self, train: Dataset, progress) -> None:
        raise NotImplementedError

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _calibrate(self, held: Dataset) -> None:
        """Isotonic calibration, reference curve and spread, from one held-out pass.

        t is drawn stratified: `calib_samples` states uniform within each of `calib_points`
        equal cells of [0, 1], plus as many at exactly t = 0 and t = 1 (the ends a sampler
        starts and stops at). Continuous t matters: on a fixed grid of t, a precise read-out
        would be calibrated onto a staircase of grid values. The reference curve is the mean
        calibrated reading in each cell, placed at the cell's mean t.
        """
        gen = generator(self.seed + 7919)
        k, n = self.calib_points, self.calib_samples
        cell = torch.arange(k, dtype=torch.float64).repeat_interleave(n)
        t_in = (cell + torch.rand(k * n, generator=gen, dtype=torch.float64)) / k
        t = torch.cat([torch.zeros(n, dtype=torch.float64), t_in,
                       torch.ones(n, dtype=torch.float64)])
        idx = torch.randint(len(held), (len(t),), generator=gen)
        raw, _ = self._raw_batched(forward_noise(held.x[idx], t, self.schedule_, gen))
        raw, tt = raw.cpu().numpy(), t.numpy()
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, tt)
        self.calib_x_ = torch.as_tensor(iso.X_thresholds_, dtype=torch.float64)
        self.calib_y_ = torch.as_tensor(iso.y_thresholds_, dtype=torch.float64)
        cal = iso.predict(raw)
        self.ref_t_ = torch.as_tensor(tt.reshape(k + 2, n).mean(1))
        self.ref_v_ = torch.as_tensor(cal.reshape(k + 2, n).mean(1))
        self.spread_c_, self.spread_s_ = _spread(cal, tt)

    # -- reading states -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "calib_x_"):
            raise NoiseshiftError(f"the {self.name} estimator is not fitted; call fit() first")

    def _check_states(self, x) -> torch.Tensor:
        self._check_fitted()
        x = _as_batch(x)
        if tuple(x.shape[1:]) != self.shape_:
            raise NoiseshiftError(
                f"states have shape {tuple(x.shape[1:])}, but this estimator reads "
                f"{self.shape_} ({self.data_spec_.get('name')} data)")
        return x

    def _raw_batched(self, x: torch.Tensor):
        means, stds = [], []
        with torch.no_grad():
            for xb in x.split(self.batch_size):
                m, s = self._raw(xb.to(self.device_))
                means.append(m)
                stds.append(s)
        std = None if stds[0] is None else torch.cat(stds)
        return torch.cat(means), std

    def calibrate(self, raw: torch.Tensor) -> torch.Tensor:
        """The isotonic map from raw read-out to t (piecewise linear, differentiable)."""
        return interp(raw, self.calib_x_, self.calib_y_)

    def predict(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated t' and its std for each state: float64 (N,) tensors on x's device."""
        x = self._check_states(x)
        out_device = x.device
        raw, raw_std = self._raw_batched(x)
        t_hat = self.calibrate(raw)
        if raw_std is None:
            # No posterior: the std of true t among held-out states that read like this one.
            t_std = interp(t_hat, self.spread_c_, self.spread_s_)
        else:
            # The posterior std mapped through the calibration, by its secant slope over
            # +-1 std (a point slope of an isotonic fit is 0 or huge).
            t_std = 0.5 * (self.calibrate(raw + raw_std) - self.calibrate(raw - raw_std))
        return t_hat.to(out_device), t_std.to(out_device)

    def reference(self, t):
        """Mean calibrated reading of true forward-noised states at scheduled t (same kind as
        t: float, numpy array or tensor)."""
        self._check_fitted()
        if isinstance(t, torch.Tensor):
            return interp(t.to(torch.float64), self.ref_t_, self.ref_v_).to(t.device)
        out = np.interp(np.asarray(t, dtype=np.float64), self.ref_t_.numpy(),
                        self.ref_v_.numpy())
        return float(out) if np.ndim(out) == 0 else out

    def reference_slope(self, window: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
        """(t, d reference / dt) at the reference points, by secants over +-window in t, so
        that the noise in each point's mean does not make the slope jitter."""
        self._check_fitted()
        t, v = self.ref_t_.numpy(), self.ref_v_.numpy()
        lo, hi = np.clip(t - window, 0.0, 1.0), np.clip(t + window, 0.0, 1.0)
        return t, (np.interp(hi, t, v) - np.interp(lo, t, v)) / (hi - lo)

    def blind_zones(self, threshold: float = BLIND_SLOPE) -> list[tuple[float, float]]:
        """[(lo, hi), ...] ranges of scheduled t where the reference curve's slope is below
        `threshold`: there the estimator cannot tell t apart, so a shift cannot be read."""
        t, slope = self.reference_slope()
        # Each reference point stands for the stretch half-way to its neighbours.
        mids = np.concatenate([[0.0], 0.5 * (t[1:] + t[:-1]), [1.0]])
        zones: list[tuple[float, float]] = []
        for i in np.flatnonzero(slope < threshold):
            lo, hi = float(mids[i]), float(mids[i + 1])
            if zones and lo <= zones[-1][1] + 1e-9:
                zones[-1] = (zones[-1][0], hi)
            else:
                zones.append((lo, hi))
        return zones

    def in_blind_zone(self, t) -> np.ndarray:
        """Boolean per t: whether it falls in a blind zone."""
        return in_zones(t, self.blind_zones())

    def score(self, x, t) -> float:
        """Negative mean absolute error of t' against the true t (higher is better)."""
        t_hat, _ = self.predict(x)
        t = torch.as_tensor(t, dtype=torch.float64).to(t_hat.device).expand_as(t_hat)
        return -float((t_hat - t).abs().mean())

    # -- posterior (learned and oracle estimators) -------------------------------------------
    def log_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid (G,), log p(t_g | x) (N, G)), normalised over the grid and differentiable in
        x; on the estimator's device. Only for estimators with a posterior."""
        if not self.has_posterior:
            raise NoiseshiftError(f"the {self.name} estimator has no posterior over t; use the "
                                  f"learned, oracle or subspace estimator")
        self._check_fitted()
        x = torch.as_tensor(x)
        if tuple(x.shape[1:]) != self.shape_:
            self._check_states(x)  # raises the shape error
        return self._log_posterior(x.to(self.device_))

    def _log_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def grad_log_posterior(self, x: torch.Tensor, t) -> torch.Tensor:
        """grad_x log p(t | x) at scheduled t ((N,) or scalar), interpolating log p linearly
        between grid points. Same shape as x."""
        grad = log_posterior_grad(self.log_posterior, x, t)
        return grad.to(device=x.device, dtype=x.dtype)

    # -- identity and persistence -------------------------------------------------------------
    def to_dict(self) -> dict:
        """What this estimator is: name, schedule, data spec and state shape."""
        self._check_fitted()
        return {"name": self.name, "schedule": self.schedule_.to_dict(),
                "data": self.data_spec_, "shape": list(self.shape_)}

    def config(self) -> dict:
        return {**self.to_dict(), "params": self.get_params()}

    def calibration_dict(self) -> dict:
        """The calibration as JSON-able lists: isotonic knots, reference curve, blind zones."""
        self._check_fitted()
        return {"isotonic_x": self.calib_x_.tolist(), "isotonic_y": self.calib_y_.tolist(),
                "reference_t": self.ref_t_.tolist(), "reference": self.ref_v_.tolist(),
                "blind_zones": [list(z) for z in self.blind_zones()]}

    def _state(self) -> dict[str, torch.Tensor]:
        return {"calib.x": self.calib_x_, "calib.y": self.calib_y_, "ref.t": self.ref_t_,
                "ref.v": self.ref_v_, "spread.c": self.spread_c_, "spread.s": self.spread_s_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.calib_x_, self.calib_y_ = state["calib.x"], state["calib.y"]
        self.ref_t_, self.ref_v_ = state["ref.t"], state["ref.v"]
        self.spread_c_, self.spread_s_ = state["spread.c"], state["spread.s"]

    def save(self, path: str | Path) -> Path:
        """torch.save of {format, version, config (JSON), state_dict}, via a temp file and a
        rename so a crash never leaves half a checkpoint."""
        fields = {"config": json.dumps(self.config()),
                  "state_dict": {k: v.detach().cpu() for k, v in self._state().items()}}
        return save_checkpoint(path, FORMAT, fields, VERSION)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> NoiseLevelEstimator:
        """Load any estimator checkpoint (or only this class's, when called on a subclass)."""
        path = Path(path)
        payload = read_checkpoint(path, FORMAT, version=VERSION, wording=CHECKPOINT_WORDING)
        config = _checked_config(payload, path)
        kind = ESTIMATORS.get(config.get("name"))
        if kind is None:
            raise CheckpointError(f"unknown estimator kind {config.get('name')!r}", path)
        if cls is not NoiseLevelEstimator and not issubclass(kind, cls):
            raise CheckpointError(f"this is a {kind.name} estimator, not {cls.name}", path)
        try:
            est = kind(**{**kind.LEGACY_PARAMS, **config["params"], "device": device})
            est.schedule_ = get_schedule(config["schedule"])
            est.data_spec_ = dict(config["data"])
            est.shape_ = tuple(int(s) for s in config["shape"])
            est.device_ = resolve_device(device)
            est._load_state(payload["state_dict"])
        except NoiseshiftError:
            raise
        except Exception as e:
            raise CheckpointError(f"damaged estimator checkpoint ({type(e).__name__}: {e})",
                                  path) from e
        return est


def in_zones(t, zones) -> np.ndarray:
    """Boolean per t: whether it falls in any (lo, hi) zone."""
    t = np.asarray(t, dtype=np.float64)
    flag = np.zeros(t.shape, dtype=bool)
    for lo, hi in zones:
        flag |= (t >= lo) & (t <= hi)
    return flag


def _checked_config(payload: dict, path: Path) -> dict:
    try:
        config = json_entry(payload, "config")
        state = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError("damaged estimator checkpoint (bad config)", path) from e
    if not isinstance(config, dict) or not isinstance(state, dict) or not all(
            k in config for k in ("name", "schedule", "data", "shape", "params")):
        raise CheckpointError("damaged estimator checkpoint (incomplete config)", path)
    return config


def _spread(cal: np.ndarray, t: np.ndarray, bins: int = 25):
    """(bin centres, std of true t) over quantile bins of the calibrated reading."""
    edges = np.unique(np.quantile(cal, np.linspace(0.0, 1.0, bins + 1)))
    which = np.clip(np.searchsorted(edges, cal, side="right") - 1, 0, max(len(edges) - 2, 0))
    centres, stds = [], []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if sel.sum() >= 2:
            centres.append(cal[sel].mean())
            stds.append(np.sqrt(np.mean((t[sel] - cal[sel]) ** 2)))
    if len(centres) < 2:  # a constant read-out: one bin
        centres, stds = [0.0, 1.0], [float(np.std(t))] * 2
    return (torch.as_tensor(np.asarray(centres), dtype=torch.float64),
            torch.as_tensor(np.asarray(stds), dtype=torch.float64))
