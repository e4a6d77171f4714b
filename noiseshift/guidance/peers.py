"""The peers NAG is compared with: epsilon scaling (Ning et al., ICLR 2024) and the
time-shift sampler (Li et al., ICLR 2024), both as denoiser wrappers."""

from __future__ import annotations

import torch

from ..errors import NoiseshiftError
from ..schedules import expand_like
from .base import FULL_INTERVAL, Guided, _in_interval, _interval, _regular, _rows


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
        best = self.schedule.nearest_second_moment_t(m, cand, self.data_m2)
        return torch.where(t64 > self.cutoff, best, t64)

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = _rows(t, x)
        ts = self.shifted_t(x, t)
        return self.at_level(x, t, ts, ts != t.double(), y, drop_t, drop_y)
