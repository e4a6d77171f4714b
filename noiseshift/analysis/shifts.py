"""Shifts as differences of a meter's mean readings, per step and per band of t, with
bootstrap CIs (`statistics.bootstrap`).

A *part* is a pair (A, B) of per-sample readings (S steps, N samples): its value at step s is
mean(A[s]) - mean(B[s]). The audit's shift is (readings of the sampler's states, readings of
true x_t at the same t); a decomposition adds the sampler part (coarse run minus the same run
at finer steps, paired sample by sample: same initial noise, same Brownian path) and the
network part (the fine run minus true x_t). Every part is resampled with the same sample
indices, so paired parts keep their pairing; true states are independent of the run, and
resampling them with the run's indices is still a bootstrap of an independent sample of the
same size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .statistics import N_BOOT, Estimate, bootstrap

if TYPE_CHECKING:
    import pandas as pd

#: Bands of t for the summaries: [lo, hi) (the last one closed).
SHIFT_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))

__all__ = ["SHIFT_BANDS", "band_table", "mean_abs", "order_fit", "read_states",
           "shift_table", "true_readings"]


def read_states(meter, states) -> np.ndarray:
    """The meter's calibrated readings t' of each step's states: (S, N) float64."""
    return np.stack([meter.predict(torch.as_tensor(np.asarray(x)).float())[0]
                     .double().cpu().numpy() for x in states])


def true_readings(meter, data, ts, n: int, seed: int = 0) -> np.ndarray:
    """The meter's readings of n fresh true states x_t at each t of ts (S, N): x0 drawn from
    the mixture when `data` has one (the law a perfect model samples), else from data.x."""
    sch = meter.schedule_
    gen = torch.Generator().manual_seed(seed + 104729)
    out = []
    for t in np.asarray(ts, dtype=np.float64):
        if data.mixture is not None:
            x0 = data.mixture.sample(n, gen)[0].double()
        else:
            x0 = data.x[torch.randint(len(data), (n,), generator=gen)].double()
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        out.append(meter.predict(sch.add_noise(x0, eps, float(t)).float())[0]
                   .double().cpu().numpy())
    return np.stack(out)


def _diff(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> Estimate:
    """mean(a) - mean(b) over the last axis (averaged over any leading axis), bootstrapped."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return bootstrap(lambda i: a[:, i].mean() - b[:, i].mean(), a.shape[-1],
                     n_boot=n_boot, seed=seed)


def shift_table(ts, parts: dict, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per step: step, t, and per part `name`, `name_lo`, `name_hi`."""
    import pandas as pd

    ts = np.asarray(ts, dtype=np.float64)
    rows = []
    for s, t in enumerate(ts):
        row = {"step": s, "t": float(t)}
        for name, (a, b) in parts.items():
            est = _diff(a[s], b[s], n_boot, seed)
            row.update({name: est.value, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _band_mask(ts, lo: float, hi: float) -> np.ndarray:
    return (ts >= lo) & ((ts < hi) | (hi >= 1.0))


def band_table(ts, parts: dict, *, bands=SHIFT_BANDS, n_boot: int = N_BOOT,
               seed: int = 0) -> pd.DataFrame:
    """One row per band of t that holds steps: band, steps, and per part its mean shift
    over the band's steps with CI (`name`, `name_lo`, `name_hi`)."""
    import pandas as pd

    ts = np.asarray(ts, dtype=np.float64)
    rows = []
    for lo, hi in bands:
        mask = _band_mask(ts, lo, hi)
        if not mask.any():
            continue
        row = {"band": f"{lo:.2f}-{hi:.2f}", "lo_t": lo, "hi_t": hi, "steps": int(mask.sum())}
        for name, (a, b) in parts.items():
            est = _diff(a[mask], b[mask], n_boot, seed)
            row.update({name: est.value, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        rows.append(row)
    return pd.DataFrame(rows)


def mean_abs(a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """The trajectory's mean |shift|: the mean over steps of |mean(a[s]) - mean(b[s])|, with
    its bootstrap CI (a summary that goes to zero as a sampler converges)."""
    return bootstrap(lambda i: np.abs(a[:, i].mean(1) - b[:, i].mean(1)).mean(), a.shape[1],
                     n_boot=n_boot, seed=seed)


def order_fit(steps, values) -> float:
    """The fitted order p of values ~ C steps^-p (least squares in log-log); nan for fewer
    than two positive values."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ok = values > 0
    if ok.sum() < 2:
        return float("nan")
    return float(-np.polyfit(np.log(steps[ok]), np.log(values[ok]), 1)[0])
