"""Classical noise-level baselines: variance matching and wavelet MAD.

Neither is trained; `fit` records what they need from the data and runs the shared
calibration, so their t' and reference curves are read the same way as the learned one's.
"""

from __future__ import annotations

import torch

from ..data import Dataset
from ..errors import NoiseshiftError
from .base import NoiseLevelEstimator

# Median of |N(0, 1)|: MAD / this is the std of Gaussian noise (Donoho & Johnstone 1994).
MAD_TO_STD = 0.6744897501960817


class VarianceMatching(NoiseLevelEstimator):
    """The t whose marginal second moment alpha_t^2 E[x0^2] + sigma_t^2 matches the state's
    mean square, as in the time-shift sampler (Li et al., ICLR 2024).

    The time-shift sampler searches a window around the scheduled t. A global read-out has no
    such window, and when the second moment is not monotone in t (the linear schedule with
    E[x0^2] < 1 dips to its minimum at t = m2 / (1 + m2)) two t match: we take the larger one,
    the noise branch, so the calibration shows the low branch as a blind zone.
    """

    name = "variance"
    grid_points = 2001

    def _fit(self, train: Dataset, progress) -> None:
        self.m2_ = torch.as_tensor(float((train.x.double() ** 2).mean()), dtype=torch.float64)

    def _moment_curve(self):
        grid = torch.linspace(0.0, 1.0, self.grid_points, dtype=torch.float64)
        return grid, self.schedule_.second_moment(grid, self.m2_)

    def _raw(self, x):
        ms = (x.reshape(len(x), -1).double() ** 2).mean(1)
        grid, sm = (v.to(x.device) for v in self._moment_curve())
        above = sm[None, :] > ms[:, None]  # (N, G)
        cross = above[:, 1:] != above[:, :-1]
        j = torch.arange(1, len(grid), device=x.device)
        last = (cross * j).amax(1)  # index after the last crossing, 0 if none
        # Crossing: interpolate in the bracketing interval; none: the closest moment.
        lo, hi = (last - 1).clamp_min(0), last
        w = ((ms - sm[lo]) / (sm[hi] - sm[lo]).where(hi > lo, torch.ones_like(ms)))
        t_cross = grid[lo] + w.clamp(0, 1) * (grid[hi] - grid[lo])
        t_near = grid[(sm[None, :] - ms[:, None]).abs().argmin(1)]
        return torch.where(last > 0, t_cross, t_near), None

    def _state(self):
        return {**super()._state(), "m2": self.m2_}

    def _load_state(self, state):
        super()._load_state(state)
        self.m2_ = state["m2"]


def haar_detail(x: torch.Tensor) -> torch.Tensor:
    """Finest-level diagonal detail coefficients of an orthonormal Haar transform, (N, M).

    Images (N, C, H, W): HH = (a - b - c + d) / 2 on each 2x2 block; vectors (N, d): the 1-d
    detail (x_2i - x_2i+1) / sqrt(2). White noise of std s gives coefficients of std s.
    """
    if x.ndim == 2:
        d = x.shape[1] - x.shape[1] % 2
        return (x[:, 0:d:2] - x[:, 1:d:2]) / 2**0.5
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return hh.reshape(len(x), -1)


class WaveletMAD(NoiseLevelEstimator):
    """Donoho's robust noise std, median(|HH1|) / 0.6745 of a one-level Haar transform, mapped
    to t through the schedule's inverse t(sigma).

    The state's noise std is sigma(t) whatever alpha(t) is, so t(sigma) applies directly; the
    data's own fine detail (scaled by alpha) biases the read-out up at small t, which the
    calibration removes where it can.
    """

    name = "wavelet"

    def _fit(self, train: Dataset, progress) -> None:
        if train.dim < 2:
            raise NoiseshiftError("wavelet MAD needs states with at least 2 values")

    def _raw(self, x):
        sigma = haar_detail(x.double()).abs().median(dim=1).values / MAD_TO_STD
        return self.schedule_.t_from_sigma(sigma), None


__all__ = ["MAD_TO_STD", "VarianceMatching", "WaveletMAD", "haar_detail"]
