"""Time grids: the even grid samplers default to, and a user's own (`--timesteps`).

A grid is a strictly decreasing float64 list of times in [0, 1], from noise to data; a run's
steps are its length - 1. `read_timesteps` takes what the command line gets: a comma list,
or a file (text: numbers separated by commas or whitespace; JSON: a list, or an object with
a ``timesteps`` list, as `noiseshift retime` writes).
"""

from __future__ import annotations

import json
from pathlib import Path

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
        raise NoiseshiftError(f"--timesteps {text!r} is neither a file nor a comma list of "
                              f"times")
    return [float(v) for v in check_timesteps(data)]
