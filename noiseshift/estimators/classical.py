"""Classical noise-level baselines: variance matching and wavelet MAD.

Neither is trained; `fit` records what they need from the data and runs the shared
calibration, so their t' and reference curves are read the same way as the learned one's.
"""

from __future__ import annotations

import numpy as np
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

    def _fit(self, train: Dataset, progress) -> None:
        self.m2_ = torch.as_tensor(float((train.x.double() ** 2).mean()), dtype=torch.float64)

    def _raw(self, x):
        ms = (x.reshape(len(x), -1).double() ** 2).mean(1)
        t = self.t_from_moment(ms.cpu().numpy())
        return torch.as_tensor(t, dtype=torch.float64, device=x.device), None

    def t_from_moment(self, ms: np.ndarray) -> np.ndarray:
        """The largest t whose marginal second moment is ``ms`` (`Schedule.t_from_second_moment`
        on each monotone branch, the last branch whose range holds ``ms``), or where none
        does, the t of the closest moment."""
        sch, m2 = self.schedule_, float(self.m2_)
        edges = sch.moment_branches(m2)
        cands = np.stack([sch.t_from_second_moment(ms, m2, t_near=0.5 * (lo + hi))
                          for lo, hi in zip(edges[:-1], edges[1:], strict=True)])  # (B, N)
        ends = sch.second_moment(edges, m2)
        low, high = np.minimum(ends[:-1], ends[1:]), np.maximum(ends[:-1], ends[1:])
        inside = (ms[None, :] >= low[:, None]) & (ms[None, :] <= high[:, None])
        last = len(edges) - 2 - np.argmax(inside[::-1], axis=0)
        closest = np.abs(sch.second_moment(cands, m2) - ms[None, :]).argmin(0)
        k = np.where(inside.any(0), last, closest)
        return cands[k, np.arange(len(ms))]

    def _state(self):
        return {**super()._state(), "m2": self.m2_}

    def _load_state(self, state):
        super()._load_state(state)
        self.m2_ = state["m2"]


def haar_level(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One level of an orthonormal 2-d Haar transform of images (..., H, W) (odd sides lose
    their last row / column): (approximation, (horizontal, vertical, diagonal detail)), each
    (..., H // 2, W // 2). White noise of std s gives detail coefficients of std s."""
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    a, b = x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]
    c, d = x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]
    return (a + b + c + d) / 2, ((a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2)


def haar_inverse(low: torch.Tensor, details: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The inverse of `haar_level`: images (..., 2h, 2w) from its approximation and
    (horizontal, vertical, diagonal) details, each (..., h, w). The transform is orthonormal
    and its 4x4 matrix is its own inverse, so the same sums put the pixels back."""
    h, v, d = details
    out = low.new_empty(*low.shape[:-2], 2 * low.shape[-2], 2 * low.shape[-1])
    out[..., 0::2, 0::2] = (low + h + v + d) / 2
    out[..., 0::2, 1::2] = (low - h + v - d) / 2
    out[..., 1::2, 0::2] = (low + h - v - d) / 2
    out[..., 1::2, 1::2] = (low - h - v + d) / 2
    return out


def haar_detail(x: torch.Tensor) -> torch.Tensor:
    """Finest-level diagonal detail coefficients of an orthonormal Haar transform, (N, M).

    Images (N, C, H, W): HH of `haar_level`; vectors (N, d): the 1-d detail
    (x_2i - x_2i+1) / sqrt(2). White noise of std s gives coefficients of std s.
    """
    if x.ndim == 2:
        d = x.shape[1] - x.shape[1] % 2
        return (x[:, 0:d:2] - x[:, 1:d:2]) / 2**0.5
    return haar_level(x)[1][2].reshape(len(x), -1)


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


__all__ = ["MAD_TO_STD", "VarianceMatching", "WaveletMAD", "haar_detail", "haar_inverse",
           "haar_level"]
