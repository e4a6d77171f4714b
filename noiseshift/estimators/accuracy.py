"""Held-out accuracy of estimators, by band of t, on the same forward-noised states."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..data import Dataset
from ..runtime import generator
from ..schedules import Schedule, get_schedule
from .base import ESTIMATORS, NoiseLevelEstimator, forward_noise


def heldout_states(data: Dataset, schedule: Schedule | str, n: int = 4096, seed: int = 1,
                   held_out: float = 0.2, split_seed: int = 0):
    """(x_t, t): n forward-noised states at t ~ U[0, 1] from the held-out split of `data`
    (the split an estimator fitted with the same `held_out` and seed never trained on)."""
    _, held = data.split(held_out, seed=split_seed)
    g = generator(seed)
    idx = torch.randint(len(held), (n,), generator=g)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    return forward_noise(held.x[idx], t, get_schedule(schedule), g), t


def baseline_names(data: Dataset) -> list[str]:
    """The baselines that apply to `data`: the classical two, plus the exact oracle for
    mixtures and the subspace oracle for data in a known subspace."""
    names = ["variance", "wavelet"]
    if data.mixture is not None:
        names.append("oracle")
    if data.subspace is not None and data.subspace.shape[1] < data.subspace.shape[0]:
        names.append("subspace")
    return names


def mae_by_band(estimators: Mapping[str, NoiseLevelEstimator], x, t, bands: int = 5) -> dict:
    """MAE of each estimator's t' against the true t, overall and per band [k/b, (k+1)/b).

    Returns {"bands": [[lo, hi], ...], "n": [...], "mae": {name: [...]},
    "overall": {name: mae}}.
    """
    t = np.asarray(t, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bands + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bands - 1)
    out = {"bands": [[float(edges[k]), float(edges[k + 1])] for k in range(bands)],
           "n": [int((which == k).sum()) for k in range(bands)], "mae": {}, "overall": {}}
    for name, est in estimators.items():
        err = np.abs(est.predict(x)[0].cpu().numpy() - t)
        out["mae"][name] = [float(err[which == k].mean()) if (which == k).any() else None
                            for k in range(bands)]
        out["overall"][name] = float(err.mean())
    return out


def compare(learned: NoiseLevelEstimator, data: Dataset, n: int = 4096, seed: int = 1,
            bands: int = 5, baselines: list[str] | None = None) -> dict:
    """Fit the applicable baselines on `data` for `learned`'s schedule (with its split and
    calibration settings) and measure all of them with `learned` on the same held-out states
    (see `mae_by_band`)."""
    schedule = learned.schedule_
    names = baseline_names(data) if baselines is None else baselines
    ests = {learned.name: learned}
    for name in names:
        ests[name] = ESTIMATORS[name](
            calib_points=learned.calib_points, calib_samples=learned.calib_samples,
            held_out=learned.held_out, seed=learned.seed, device=learned.device,
        ).fit(data, schedule)
    x, t = heldout_states(data, schedule, n, seed, learned.held_out, learned.seed)
    result = mae_by_band(ests, x, t, bands)
    result["blind_zones"] = {name: [list(z) for z in e.blind_zones()] for name, e in ests.items()}
    return result
