"""First-order theory of noise shift, and four routes from a trajectory to a predicted shift.

The paper's proposition: a state that carries extra isotropic error of per-dimension std
sigma_e on top of the scheduled noise looks like a state at t' with
``sigma(t')^2 = sigma_t^2 + sigma_e^2``; to first order
``delta = (sqrt(sigma_t^2 + sigma_e^2) - sigma_t) / sigma'(t)``.

That ignores two things. alpha changes with t as well (under the linear and VP schedules a
noisier state also has less signal), and sampler error is rarely isotropic noise: a large
part of it is radial (along x) or in the span of the data means, where it changes the state's
norm at first order. The routes below take those into account to different degrees:

(a) sigma_e = RMS deviation from a reference trajectory, fed to the paper's formula;
(b) reference free: the t' whose marginal second moment ``alpha^2 m2 + sigma^2`` equals the
    states' measured one (alpha aware; `Schedule.t_from_second_moment`);
(c) the signed norm excess ``(|x_hat|^2 - |x_ref|^2) / d`` over the schedule's moment slope;
(d) the paper's formula on the part of the deviation orthogonal to x and to the data-mean span.

`simulation` runs these routes against a calibrated meter on simulated runs; what those
experiments show is summarised there.

Functions over a schedule accept numpy arrays or torch tensors and answer in numpy (float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..schedules import Schedule, get_schedule

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ROUTES",
    "ROUTE_NAMES",
    "Deviation",
    "decompose_deviation",
    "delta_exact",
    "delta_first_order",
    "delta_second_moment",
    "mean_span",
    "predict_routes",
    "r2_score",
    "route_a",
    "route_b",
    "route_c",
    "route_d",
    "route_r2",
    "t_exact",
]

ROUTES = ("a", "b", "c", "d")
ROUTE_NAMES = {
    "a": "paper formula, RMS deviation",
    "b": "second-moment match (reference free)",
    "c": "signed norm excess",
    "d": "paper formula, orthogonal part",
}


def as_float64(v) -> np.ndarray:
    """A numpy float64 array from an array, a tensor or a number."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


# -- the proposition -------------------------------------------------------------------------

def delta_first_order(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """The paper's first-order shift (sqrt(sigma_t^2 + sigma_e^2) - sigma_t) / sigma'(t)."""
    schedule = get_schedule(schedule)
    t, se = as_float64(t), as_float64(sigma_e)
    s = schedule.sigma(t)
    return (np.sqrt(s**2 + se**2) - s) / schedule.d_sigma(t)


def t_exact(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """The t' with sigma(t')^2 = sigma_t^2 + sigma_e^2 (clipped to the schedule's range)."""
    schedule = get_schedule(schedule)
    t, se = as_float64(t), as_float64(sigma_e)
    return as_float64(schedule.t_from_sigma(np.sqrt(schedule.sigma(t) ** 2 + se**2)))


def t_exact_log_snr(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """The t' whose log-SNR is that of x_t + e, e ~ N(0, sigma_e^2 I):
    alpha(t')^2 / sigma(t')^2 = alpha_t^2 / (sigma_t^2 + sigma_e^2). This is the coordinate a
    scale-free meter reads (it sees x / rms(x)); x_t + e is exactly a state at t' times
    alpha_t / alpha(t') (`path_scale`). Under VE (alpha = 1) it equals `t_exact`."""
    schedule = get_schedule(schedule)
    t, se = as_float64(t), as_float64(sigma_e)
    lam = 2 * np.log(as_float64(schedule.alpha(t))) - np.log(
        as_float64(schedule.sigma(t)) ** 2 + se**2)
    return as_float64(schedule.t_from_log_snr(lam))


def path_scale(t, t_prime, schedule: Schedule | str) -> np.ndarray:
    """alpha(t') / alpha(t): x_t + e times this is on the path at t' = `t_exact_log_snr`."""
    schedule = get_schedule(schedule)
    return as_float64(schedule.alpha(as_float64(t_prime))) / as_float64(
        schedule.alpha(as_float64(t)))


def delta_exact(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """t_exact - t: the proposition without the first-order expansion."""
    return t_exact(t, sigma_e, schedule) - as_float64(t)


def delta_second_moment(t, m, m2: float, schedule: Schedule | str) -> np.ndarray:
    """Alpha-aware shift: the t' whose marginal second moment alpha^2 m2 + sigma^2 is the
    measured m, on the monotone branch that holds t (`Schedule.t_from_second_moment`), - t."""
    t = as_float64(t)
    return get_schedule(schedule).t_from_second_moment(as_float64(m), m2, t_near=t) - t


# -- deviations and the four routes ------------------------------------------------------------

def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).double()


def mean_span(data) -> torch.Tensor:
    """An orthonormal basis (d, k) of the data-mean span: a mixture's component means, else
    the class means of labelled data, else the global mean."""
    mixture = getattr(data, "mixture", None) or (data if hasattr(data, "means") else None)
    if mixture is not None:
        vecs = mixture.means.T
    else:
        x = _flat(data.x)
        labels = getattr(data, "labels", None)
        if labels is not None:
            vecs = torch.stack([x[labels == c].mean(0) for c in labels.unique()], 1)
        else:
            vecs = x.mean(0, keepdim=True).T
    q, r = torch.linalg.qr(vecs.double())
    keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max()
    return q[:, keep]


@dataclass
class Deviation:
    """e = x_hat - x_ref split into parts along x (radial), in the mean span, and the rest."""

    radial: torch.Tensor  # (N, d)
    mean: torch.Tensor  # (N, d)
    orth: torch.Tensor  # (N, d)
    orth_dim: int  # dimensions the orthogonal part lives in


def decompose_deviation(x_hat, x_ref, basis: torch.Tensor | None = None) -> Deviation:
    """Split the deviation into its mean-span part, its part along x_ref (outside the mean
    span) and the remainder; the three are orthogonal and sum to x_hat - x_ref."""
    xh, xr = _flat(x_hat), _flat(x_ref)
    e = xh - xr
    d = e.shape[1]
    if basis is None:
        basis = torch.zeros(d, 0, dtype=torch.float64)
    basis = basis.double()
    e_mean = (e @ basis) @ basis.T
    u = xr - (xr @ basis) @ basis.T
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    e_rad = (e * u).sum(1, keepdim=True) * u
    return Deviation(e_rad, e_mean, e - e_mean - e_rad, d - basis.shape[1] - 1)


def route_a(x_hat, x_ref, t: float, schedule: Schedule) -> float:
    """(a) The paper's formula with sigma_e^2 = mean squared deviation per dimension."""
    e = _flat(x_hat) - _flat(x_ref)
    return float(delta_first_order(t, math.sqrt(float((e**2).mean())), schedule))


def route_b(x_hat, t: float, schedule: Schedule, m2: float) -> float:
    """(b) Reference free: the t' whose marginal second moment matches the states'."""
    m = float((_flat(x_hat) ** 2).mean())
    return float(delta_second_moment(t, m, m2, schedule))


def route_c(x_hat, x_ref, t: float, schedule: Schedule, m2: float) -> float:
    """(c) Signed norm excess over the schedule's moment slope (first order in the excess;
    infinite where the slope vanishes, at t* = m2/(1+m2) under the linear schedule)."""
    excess = float(((_flat(x_hat) ** 2).sum(1) - (_flat(x_ref) ** 2).sum(1)).mean())
    excess /= _flat(x_hat).shape[1]
    return float(excess / get_schedule(schedule).moment_slope(t, m2))


def route_d(x_hat, x_ref, t: float, schedule: Schedule, basis=None) -> float:
    """(d) The paper's formula on the deviation orthogonal to x and to the data-mean span."""
    dev = decompose_deviation(x_hat, x_ref, basis)
    sigma_e = math.sqrt(float((dev.orth**2).sum(1).mean()) / max(dev.orth_dim, 1))
    return float(delta_first_order(t, sigma_e, schedule))


def predict_routes(states, ts, schedule: Schedule | str, *, m2: float, reference=None,
                   basis=None) -> pd.DataFrame:
    """Per-step predictions of all routes for states (S, N, ...) at nominal times ts (S,).

    Routes (a), (c), (d) need the reference states (S, N, ...) and are NaN without them.
    Columns: t, a, b, c, d, sigma_e (RMS deviation), sigma_e_orth, and the share of the
    deviation's energy that is radial / in the mean span / orthogonal.
    """
    import pandas as pd

    schedule = get_schedule(schedule)
    rows = []
    for i, t in enumerate(as_float64(ts)):
        row = {"t": float(t), "b": route_b(states[i], t, schedule, m2)}
        if reference is not None:
            dev = decompose_deviation(states[i], reference[i], basis)
            energy = [float((p**2).sum()) for p in (dev.radial, dev.mean, dev.orth)]
            total = max(sum(energy), 1e-300)
            row.update(
                a=route_a(states[i], reference[i], t, schedule),
                c=route_c(states[i], reference[i], t, schedule, m2),
                d=route_d(states[i], reference[i], t, schedule, basis),
                sigma_e=math.sqrt(total / (dev.orth.numel())),
                radial_share=energy[0] / total, mean_share=energy[1] / total,
                orth_share=energy[2] / total,
            )
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ROUTES:
        if col not in df:
            df[col] = np.nan
    return df


# -- scoring predictions ------------------------------------------------------------------------

def r2_score(measured, predicted) -> float:
    """Coefficient of determination of a prediction (not of a fitted line): 1 is perfect,
    0 is no better than the mean of the measurement, negative is worse. NaN pairs dropped."""
    y, p = as_float64(measured), as_float64(predicted)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if y.size < 2:
        return float("nan")
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def route_r2(df: pd.DataFrame, t_range=(0.2, 0.9), gain: bool = True,
             columns=ROUTES) -> dict[str, float]:
    """R^2 of each prediction column against `measured` for t in t_range (predictions times
    the meter's gain when `gain` and the frame has a gain column)."""
    m = (df.t >= t_range[0]) & (df.t <= t_range[1])
    g = df.gain[m] if gain and "gain" in df else 1.0
    return {c: r2_score(df.measured[m], df[c][m] * g) for c in columns}
