"""Time grids: the even grid samplers default to, a user's own (`--timesteps`), and the
named spacings (uniform in log-SNR, EDM's Karras spacing, a power of t).

A grid is a strictly decreasing float64 list of times in [0, 1], from noise to data; a run's
steps are its length - 1. `read_timesteps` takes what the command line gets: a comma list,
or a file (text: numbers separated by commas or whitespace; JSON: a list, or an object with
a ``timesteps`` list, as `noiseshift retime` writes); `parse_timesteps` also takes a grid's
name, whose times `named_grid` lays out once the run's steps and schedule are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .errors import NoiseshiftError


def timesteps(steps: int, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """(steps + 1,) float64 times, evenly spaced and decreasing from t_max to t_min."""
    if steps < 1:
        raise NoiseshiftError(f"steps must be at least 1, got {steps}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise NoiseshiftError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def check_timesteps(ts) -> torch.Tensor:
    """A given time grid as (S + 1,) float64: at least two finite times in [0, 1], strictly
    decreasing (the user's own grid, `--timesteps`, in place of `timesteps`)."""
    try:
        ts = torch.as_tensor([float(v) for v in ts], dtype=torch.float64)
    except (TypeError, ValueError):
        raise NoiseshiftError(f"timesteps must be numbers, got {ts!r}") from None
    if ts.numel() < 2:
        raise NoiseshiftError(f"timesteps need at least 2 times (1 step), got {ts.numel()}")
    if not bool(torch.isfinite(ts).all()):
        raise NoiseshiftError("timesteps must be finite")
    if float(ts.min()) < 0.0 or float(ts.max()) > 1.0:
        raise NoiseshiftError(f"timesteps must lie in [0, 1], got {float(ts.min()):g}.."
                              f"{float(ts.max()):g}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise NoiseshiftError("timesteps must be strictly decreasing (from noise to data)")
    return ts


def read_timesteps(text: str) -> list[float]:
    """A grid from ``--timesteps``: a file's path, or a comma list; checked."""
    path = Path(text)
    if path.is_file():
        body = path.read_text()
        try:
            data = json.loads(body)
        except ValueError:
            data = body.replace(",", " ").split()
        if isinstance(data, dict):
            data = data.get("timesteps")
        if not isinstance(data, list):
            raise NoiseshiftError(f"{path} holds no list of times (want a JSON list, an "
                                  f"object with 'timesteps', or numbers)")
    elif any(c.isdigit() for c in text) and "," in text:
        data = text.split(",")
    else:
        raise NoiseshiftError(f"--timesteps {text!r} is neither a file, a comma list of "
                              f"times nor a grid's name ({', '.join(GRIDS)})")
    return [float(v) for v in check_timesteps(data)]


# -- named spacings ----------------------------------------------------------------------------

#: The noise-to-signal ratio sigma/alpha = exp(-log_snr / 2) that the named grids span where
#: the schedule's own range is wider: EDM's sigma_min, sigma_max (Karras et al. 2022, and
#: k-diffusion's defaults). At t = 0 (sigma = 0) and, under the linear and VP-cosine
#: schedules, at t = 1 (alpha = 0) log-SNR is infinite, so the spacing is laid between the
#: clipped ends and the ends themselves are then set back to t_max and t_min: the sampler
#: still starts from pure noise at t_max, and its last step (a model call at ts[-2] whose x0
#: is returned, `final_denoise`) ends at t_min, as on the even grid.
NOISE_RATIO_RANGE = (0.002, 80.0)


def _log_snr_ends(schedule, t_max: float, t_min: float, smin: float, smax: float):
    """log-SNR at t_max and t_min, clipped to [-2 log smax, -2 log smin]."""
    if not 0.0 < smin < smax:
        raise NoiseshiftError(f"need 0 < smin < smax, got smin={smin:g}, smax={smax:g}")
    lo, hi = -2.0 * math.log(smax), -2.0 * math.log(smin)
    with np.errstate(divide="ignore"):  # the infinite ends are what the clip is for
        ends = schedule.log_snr(np.array([t_max, t_min], dtype=np.float64))
    return [float(np.clip(v, lo, hi)) for v in ends]


def _with_ends(ts, t_max: float, t_min: float, name: str) -> torch.Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).clone()
    ts[0], ts[-1] = t_max, t_min
    if not bool((ts[1:] < ts[:-1]).all()):
        raise NoiseshiftError(f"the {name} grid has repeated times: t in [{t_min:g}, "
                              f"{t_max:g}] lies outside its noise-ratio range (smin, smax) "
                              f"or has too many steps for it")
    return ts


def logsnr_grid(schedule, steps: int, t_max: float = 1.0, t_min: float = 0.0,
                smin: float = NOISE_RATIO_RANGE[0], smax: float = NOISE_RATIO_RANGE[1]
                ) -> torch.Tensor:
    """Uniform in log-SNR (DPM-Solver's spacing; k-diffusion's ``get_sigmas_exponential``)
    between the clipped ends (`NOISE_RATIO_RANGE`)."""
    timesteps(steps, t_max, t_min)  # checks steps and the range
    hi, lo = _log_snr_ends(schedule, t_max, t_min, smin, smax)
    lam = torch.linspace(hi, lo, steps + 1, dtype=torch.float64)
    return _with_ends(schedule.t_from_log_snr(lam), t_max, t_min, "logsnr")


def karras_grid(schedule, steps: int, t_max: float = 1.0, t_min: float = 0.0,
                rho: float = 7.0, smin: float = NOISE_RATIO_RANGE[0],
                smax: float = NOISE_RATIO_RANGE[1]) -> torch.Tensor:
    """EDM's spacing (Karras et al. 2022): uniform in r^(1/rho), r = sigma/alpha, between the
    clipped ends; rho = 1 is uniform in r, rho -> infinity uniform in log-SNR."""
    timesteps(steps, t_max, t_min)
    if rho <= 0:
        raise NoiseshiftError(f"rho must be positive, got {rho:g}")
    hi, lo = _log_snr_ends(schedule, t_max, t_min, smin, smax)
    # r^(1/rho) = exp(-log_snr / (2 rho))
    u = torch.linspace(math.exp(-hi / (2 * rho)), math.exp(-lo / (2 * rho)), steps + 1,
                       dtype=torch.float64)
    lam = -2.0 * rho * torch.log(u)
    return _with_ends(schedule.t_from_log_snr(lam), t_max, t_min, "karras")


def power_grid(schedule, steps: int, t_max: float = 1.0, t_min: float = 0.0,
               k: float = 2.0) -> torch.Tensor:
    """Uniform in (t - t_min)^(1/k): k = 1 is the even grid, k > 1 puts more steps near the
    data (EDM's rho, in t rather than sigma; independent of the schedule)."""
    if k <= 0:
        raise NoiseshiftError(f"k must be positive, got {k:g}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return _with_ends(t_min + (t_max - t_min) * u**k, t_max, t_min, "power")


#: The named grids `--timesteps NAME[:KEY=VALUE,...]` takes, and each one's parameters.
GRIDS = {"logsnr": (logsnr_grid, ("smin", "smax")),
         "karras": (karras_grid, ("rho", "smin", "smax")),
         "power": (power_grid, ("k",))}


def parse_grid_name(text: str) -> tuple[str, dict] | None:
    """(name, parameters) of a named grid such as 'karras' or 'karras:rho=5,smin=0.01'
    (parameters split by ',' or ':'); None if ``text`` does not start with a grid's name
    (a file or a list)."""
    name, _, rest = text.partition(":")
    if name not in GRIDS:
        return None
    params = {}
    for item in filter(None, rest.replace(":", ",").split(",")):
        key, _, value = item.partition("=")
        if key not in GRIDS[name][1]:
            raise NoiseshiftError(f"grid {name!r} takes {', '.join(GRIDS[name][1])}; got "
                                  f"{key!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise NoiseshiftError(f"grid {name!r}: {key} must be a number, got "
                                  f"{value!r}") from None
    return name, params


def named_grid(text: str, schedule, steps: int, t_max: float = 1.0,
               t_min: float = 0.0) -> torch.Tensor:
    """The (steps + 1,) grid ``text`` names (`GRIDS`), under ``schedule``, from t_max to
    t_min."""
    parsed = parse_grid_name(text)
    if parsed is None:
        raise NoiseshiftError(f"unknown grid {text!r}; use one of {sorted(GRIDS)}")
    name, params = parsed
    return GRIDS[name][0](schedule, steps, t_max, t_min, **params)


def parse_timesteps(text: str) -> str | list[float]:
    """``--timesteps``: a grid's name (checked, kept as text: its times follow the run's
    steps and schedule, `named_grid`), or a file or a comma list (`read_timesteps`)."""
    if parse_grid_name(text) is not None:
        return text
    return read_timesteps(text)
