"""Noise levels from other libraries, mapped onto noiseshift's schedules.

A sampler from another library holds its state as ``x = a x0 + s eps`` for some (a, s): DDPM
and DDIM keep the VP form (sqrt(abar), sqrt(1 - abar)), k-style samplers the VE form (1, sigma),
flow models (1 - sigma, sigma). Two states with the same log-SNR 2 log(a / s) differ only by a
scale, so any (a, s) maps onto a noiseshift schedule exactly: t is the schedule's t with that
log-SNR, and the state in the schedule's form is ``k x`` with ``k = sigma(t) / s``.

noiseshift writes diffusion models (every VP beta schedule, and VE states) as ``vp-cosine``
(t = 2/pi atan2(s, a), k = 1 / hypot(a, s)) and flow models as ``linear`` (t = sigma, k = 1);
docs/trajectory-format.md specifies this for other writers.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import NoiseshiftError
from ..schedules import Schedule, get_schedule

VP_FAMILY = "vp-cosine"
FLOW_FAMILY = "linear"
# diffusers' v-prediction, sqrt(abar) eps - sqrt(1 - abar) x0, is this factor times
# noiseshift's vp-cosine velocity d_alpha x0 + d_sigma eps = (pi / 2) (alpha eps - sigma x0).
V_TO_VELOCITY = math.pi / 2
_EXACT = 1e-12


def map_level(a: float, s: float, schedule: Schedule | str | dict) -> tuple[float, float]:
    """(t, k): the t of ``schedule`` with the log-SNR of x = a x0 + s eps, and the factor that
    takes such an x to that schedule's form (k x = alpha(t) x0 + sigma(t) eps).

    k is exactly 1.0 when the state is already in the schedule's form (VP states under
    vp-cosine, flow states under linear), so those states are recorded bit for bit.
    """
    a, s = float(a), float(s)
    if not (a >= 0 and s >= 0 and a + s > 0 and math.isfinite(a + s)):
        raise NoiseshiftError(f"not a noise level: x = {a} x0 + {s} eps")
    sched = get_schedule(schedule)
    if sched.name == VP_FAMILY:
        t, k = (2.0 / math.pi) * math.atan2(s, a), 1.0 / math.hypot(a, s)
    elif sched.name == FLOW_FAMILY:
        t, k = s / (a + s), 1.0 / (a + s)
        if abs(a + s - 1.0) < _EXACT:
            t = s
    else:
        t, k = _by_log_snr(a, s, sched)
    return t, 1.0 if abs(k - 1.0) < _EXACT else k


def _by_log_snr(a: float, s: float, sched: Schedule) -> tuple[float, float]:
    if a == 0.0:
        t = 1.0
    elif s == 0.0:
        t = 0.0
    else:
        lam = 2.0 * (math.log(a) - math.log(s))
        t = float(sched.t_from_log_snr(lam))
        got = float(sched.log_snr(t))
        if not abs(got - lam) <= 1e-6 * max(1.0, abs(lam)):
            raise NoiseshiftError(f"noise level sigma/alpha = {s / a:.4g} lies outside the "
                                  f"{sched.name} schedule's range; use vp-cosine, which holds "
                                  f"every level")
    alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
    return t, (sigma / s) if s > 0 else (alpha / a)


def to_schedule_form(x: torch.Tensor, k: float) -> torch.Tensor:
    """k x as float32 (x itself, as float32, when k == 1)."""
    if k == 1.0:
        return x if x.dtype == torch.float32 else x.float()
    return (x.double() * k).float()


def table_level(alphas_cumprod, timestep: float) -> tuple[float, float]:
    """(a, s) = (sqrt(abar), sqrt(1 - abar)) at a DDPM timestep of a table of T cumulative
    alphas. A fractional timestep (k-style samplers with Karras or other sigmas) is placed as
    diffusers' `_sigma_to_t` places it: log sigma linear between table entries."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    t = float(timestep)
    i = int(round(t))
    if abs(t - i) < 1e-6 and 0 <= i < len(ac):
        abar = float(ac[i])
    else:
        log_sigma = 0.5 * (np.log1p(-ac) - np.log(ac))
        sigma = math.exp(float(np.interp(t, np.arange(len(ac)), log_sigma)))
        abar = 1.0 / (1.0 + sigma * sigma)
    return math.sqrt(abar), math.sqrt(max(0.0, 1.0 - abar))


def ve_level(sigma: float) -> tuple[float, float]:
    """(a, s) of a VE state x = x0 + sigma eps (k-diffusion, k-style diffusers schedulers)."""
    return 1.0, float(sigma)


__all__ = ["FLOW_FAMILY", "VP_FAMILY", "V_TO_VELOCITY", "map_level", "table_level",
           "to_schedule_form", "ve_level"]
