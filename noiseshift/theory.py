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
    states' measured one (alpha aware);
(c) the signed norm excess ``(|x_hat|^2 - |x_ref|^2) / d`` over the schedule's moment slope;
(d) the paper's formula on the part of the deviation orthogonal to x and to the data-mean span.

A reference trajectory shares the coarse run's initial noise and Brownian path and integrates
the same reverse SDE with many more steps: `brownian_increments` draws the fine path,
`coarsen_increments` sums it for the coarse run, and `bridge_increments` refines the coarse
increments of an existing run (a Brownian bridge: exact conditional law given the sums).

Predictions are compared with a calibrated meter (on mixtures the exact posterior p(t | x),
`exact_meter`): `compare_routes` runs the sampler with simulated model error (`PerturbedDenoiser`)
and `injection_experiment` adds isotropic noise to true states. A meter reports a true shift
times its gain, the slope of its reference curve (`meter_gain`, ~1 where it reads well, ~0 in a
blind zone), so `route_r2` scores the predictions times that gain.

What these experiments show (tests/test_theory.py pins the robust parts): the routes agree with
the exact posterior when the data carry little signal energy (small E|x0|^2), where the noise
level is read from the state's spread; with well separated, image-like modes the posterior also
reads the signal along the mode means, which isotropic error leaves alone, so the proposition
overstates the measured shift late in t under VP, and the second-moment routes (b), (c) fail
(under the linear schedule they flip sign below t* = m2 / (1 + m2)). Route (a) fails whenever
the deviation is not noise-like (mode switching and time offsets put it in the mean span and
along x); route (d) fixes that for bias-like error.

Functions over a schedule accept numpy arrays or torch tensors and answer in numpy (float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .errors import NoiseshiftError
from .schedules import Schedule, expand_like, get_schedule

__all__ = [
    "ROUTES",
    "PerturbedDenoiser",
    "bridge_increments",
    "brownian_increments",
    "coarsen_increments",
    "compare_routes",
    "decompose_deviation",
    "delta_exact",
    "delta_first_order",
    "delta_second_moment",
    "fine_grid",
    "mean_span",
    "moment_branches",
    "moment_slope",
    "exact_meter",
    "injection_experiment",
    "meter_gain",
    "measured_shift",
    "predict_routes",
    "r2_score",
    "reference_readings",
    "route_r2",
    "reference_trajectory",
    "route_a",
    "route_b",
    "route_c",
    "route_d",
    "sample_em_path",
    "simulate_run",
    "t_exact",
    "t_from_second_moment",
]

ROUTES = ("a", "b", "c", "d")
ROUTE_NAMES = {
    "a": "paper formula, RMS deviation",
    "b": "second-moment match (reference free)",
    "c": "signed norm excess",
    "d": "paper formula, orthogonal part",
}


def _np(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


# -- the proposition -------------------------------------------------------------------------

def delta_first_order(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """The paper's first-order shift (sqrt(sigma_t^2 + sigma_e^2) - sigma_t) / sigma'(t)."""
    schedule = get_schedule(schedule)
    t, se = _np(t), _np(sigma_e)
    s = schedule.sigma(t)
    return (np.sqrt(s**2 + se**2) - s) / schedule.d_sigma(t)


def t_exact(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """The t' with sigma(t')^2 = sigma_t^2 + sigma_e^2 (clipped to the schedule's range)."""
    schedule = get_schedule(schedule)
    t, se = _np(t), _np(sigma_e)
    return _np(schedule.t_from_sigma(np.sqrt(schedule.sigma(t) ** 2 + se**2)))


def delta_exact(t, sigma_e, schedule: Schedule | str) -> np.ndarray:
    """t_exact - t: the proposition without the first-order expansion."""
    return t_exact(t, sigma_e, schedule) - _np(t)


# -- the alpha-aware prediction: second-moment matching ---------------------------------------

def moment_slope(t, m2: float, schedule: Schedule | str) -> np.ndarray:
    """d/dt of the marginal second moment alpha_t^2 m2 + sigma_t^2 (per dimension)."""
    schedule = get_schedule(schedule)
    t = _np(t)
    return 2.0 * (schedule.alpha(t) * schedule.d_alpha(t) * m2
                  + schedule.sigma(t) * schedule.d_sigma(t))


def moment_branches(m2: float, schedule: Schedule | str, grid: int = 4097) -> np.ndarray:
    """Edges [0, t1, ..., 1] of the intervals on which the second moment is monotone in t.

    Under VP schedules and VE it is monotone (one branch) unless m2 == 1 under VP, where it
    is flat and says nothing. Under the linear schedule it has a minimum at t* = m2/(1+m2):
    below t* extra noise makes a state look *cleaner* to a second-moment meter.
    """
    schedule = get_schedule(schedule)
    tt = np.linspace(1e-9, 1.0, grid)  # VP-linear's sigma' is infinite at t = 0
    g = moment_slope(tt, m2, schedule)
    edges = [0.0]
    for i in np.nonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0)[0]:
        lo, hi = tt[i], tt[i + 1]
        for _ in range(60):  # bisect the sign change of the slope
            mid = 0.5 * (lo + hi)
            if np.sign(moment_slope(mid, m2, schedule)) == np.sign(g[i]):
                lo = mid
            else:
                hi = mid
        edges.append(0.5 * (lo + hi))
    return np.array(edges + [1.0])


def t_from_second_moment(m, m2: float, schedule: Schedule | str, t_near=None,
                         iters: int = 80) -> np.ndarray:
    """The t' at which the marginal second moment alpha^2 m2 + sigma^2 equals m.

    Solved by bisection on the monotone branch that holds `t_near` (the scheduled t; default
    the single branch, or the last one if there are several). A measured m beyond the
    branch's range maps to the branch's end: under the linear schedule that end is the
    moment's minimum t*, where the prediction carries no information.
    """
    schedule = get_schedule(schedule)
    m = _np(m)
    edges = moment_branches(m2, schedule)
    near = np.full_like(m, edges[-2] if t_near is None else 0.5)
    if t_near is not None:
        near = np.broadcast_to(_np(t_near), m.shape).astype(np.float64)
    k = np.clip(np.searchsorted(edges, near, side="right") - 1, 0, len(edges) - 2)
    lo, hi = edges[k].copy(), edges[k + 1].copy()
    f = lambda t: schedule.second_moment(t, m2)  # noqa: E731
    rising = f(hi) >= f(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = (f(mid) < m) == rising  # root is above mid
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def delta_second_moment(t, m, m2: float, schedule: Schedule | str) -> np.ndarray:
    """Alpha-aware shift: t_from_second_moment(m, near t) - t."""
    t = _np(t)
    return t_from_second_moment(m, m2, schedule, t_near=t) - t


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
    return float(excess / moment_slope(t, m2, schedule))


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
    schedule = get_schedule(schedule)
    rows = []
    for i, t in enumerate(_np(ts)):
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


def r2_score(measured, predicted) -> float:
    """Coefficient of determination of a prediction (not of a fitted line): 1 is perfect,
    0 is no better than the mean of the measurement, negative is worse. NaN pairs dropped."""
    y, p = _np(measured), _np(predicted)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if y.size < 2:
        return float("nan")
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


# -- Brownian paths and the reference trajectory -----------------------------------------------

def fine_grid(ts, n_sub: int) -> np.ndarray:
    """Each interval of the decreasing grid ts split into n_sub equal steps (the coarse
    times are every n_sub-th fine time)."""
    ts = _np(ts)
    parts = [np.linspace(a, b, n_sub + 1)[:-1] for a, b in zip(ts[:-1], ts[1:], strict=True)]
    return np.concatenate(parts + [ts[-1:]])


def brownian_increments(ts, shape, n_sub: int = 1, generator: torch.Generator | None = None):
    """Fine Brownian increments for the grid ts refined n_sub times: (S, n_sub, *shape),
    float64, increment k of step i with variance |ts[i+1] - ts[i]| / n_sub."""
    ts = _np(ts)
    steps = len(ts) - 1
    z = torch.randn(steps, n_sub, *shape, generator=generator, dtype=torch.float64)
    h = torch.as_tensor(np.abs(np.diff(ts)) / n_sub).reshape(steps, 1, *([1] * len(shape)))
    return z * h.sqrt()


def coarsen_increments(fine: torch.Tensor) -> torch.Tensor:
    """The coarse run's increments (S, *shape): the sum of each step's fine increments."""
    return fine.sum(1)


def bridge_increments(coarse: torch.Tensor, ts, n_sub: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Fine increments (S, n_sub, *shape) that sum to the given coarse ones, drawn from their
    exact conditional law (a Brownian bridge on each step): lets a reference trajectory share
    the Brownian path of a run whose coarse increments are known."""
    fine = brownian_increments(ts, coarse.shape[1:], n_sub, generator)
    return fine - fine.mean(1, keepdim=True) + coarse.double().unsqueeze(1) / n_sub


@torch.no_grad()
def sample_em_path(model, x: torch.Tensor, ts, dW: torch.Tensor, *, y=None,
                   callback: Callable | None = None, diffusion: float = 2.0,
                   final_denoise: bool = True) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE ``dx = [v - g^2/2 score] dt + g dW`` with
    g(t)^2 = diffusion * sigma(t), driven by given Brownian increments dW (S, N, ...), each
    with variance |dt|, instead of a generator. Same steps and conventions as
    `sampling.sample_euler_maruyama`: callback(info) before each update; with final_denoise
    the last step returns the model's x0 prediction."""
    sch = model.schedule
    ts = _np(ts)
    steps = len(ts) - 1
    for i in range(steps):
        t = float(ts[i])
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device), y=y)
        x0 = sch.convert(out, model.prediction, "x0", x, t).to(x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_pred": x0})
        if final_denoise and i == steps - 1:
            return x0
        g2 = diffusion * float(sch.sigma(t))
        drift = (sch.convert(out, model.prediction, "velocity", x, t)
                 - 0.5 * g2 * sch.convert(out, model.prediction, "score", x, t)).to(x.dtype)
        x = x - (t - float(ts[i + 1])) * drift + (math.sqrt(g2) * dW[i]).to(x)
    return x


def reference_trajectory(model, x: torch.Tensor, ts, fine: torch.Tensor, *, y=None,
                         diffusion: float = 2.0, final_denoise: bool = True):
    """The same SDE path integrated on the fine grid: (states (S, N, ...) at the coarse
    times ts[:-1], final sample). `fine` are the (S, n_sub, N, ...) increments whose sums
    drive the coarse run; `model` is the reference model (the exact one when known)."""
    steps, n_sub = fine.shape[:2]
    states = [None] * steps

    def keep(info):
        if info["i"] % n_sub == 0:
            states[info["i"] // n_sub] = info["x"].detach().clone()

    dW = fine.reshape(steps * n_sub, *fine.shape[2:])
    out = sample_em_path(model, x, fine_grid(ts, n_sub), dW, y=y, callback=keep,
                         diffusion=diffusion, final_denoise=final_denoise)
    return torch.stack(states), out


# -- simulated model error and the oracle meter ------------------------------------------------

class PerturbedDenoiser(torch.nn.Module):
    """A denoiser with simulated error in its x0 prediction, for theory experiments.

    kind: "noise" (fresh isotropic error per call, std `scale` per dimension), "bias" (a fixed
    random offset of RMS `scale`), "gain" (x0 scaled by 1 + scale: radial), "time" (the
    model is told t * (1 + scale): a time-embedding offset).
    """

    KINDS = ("noise", "bias", "gain", "time")

    def __init__(self, model, kind: str, scale: float, seed: int = 0):
        super().__init__()
        if kind not in self.KINDS:
            raise NoiseshiftError(f"unknown error kind {kind!r}; use one of {self.KINDS}")
        self.model, self.kind, self.scale = model, kind, float(scale)
        self.schedule, self.prediction = model.schedule, model.prediction
        self.num_classes = model.num_classes
        self.supports_null_t = False
        self.config = {"kind": "perturbed", "error": kind, "scale": scale,
                       "base": model.config}
        self._gen = torch.Generator().manual_seed(seed)
        self._bias = None

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        if self.kind == "time":
            return self.model(x, (t * (1 + self.scale)).clamp(0, 1), y=y)
        out = self.model(x, t, y=y)
        x0 = self.schedule.convert(out, self.prediction, "x0", x, t)
        if self.kind == "gain":
            x0 = x0 * (1 + self.scale)
        elif self.kind == "noise":
            x0 = x0 + self.scale * torch.randn(x.shape, generator=self._gen).to(x0)
        else:
            if self._bias is None:
                b = torch.randn(x.shape[1:], generator=self._gen)
                self._bias = self.scale * b / b.pow(2).mean().sqrt()
            x0 = x0 + self._bias.to(x0)
        eps = (x - expand_like(self.schedule.alpha(t), x) * x0) / expand_like(
            self.schedule.sigma(t).clamp_min(1e-12), x)
        return self.schedule.from_x0_eps(x0, eps, self.prediction, x, t).to(x.dtype)


def exact_meter(data, schedule: Schedule | str, grid_points: int = 128):
    """The calibrated exact-posterior meter for mixture data (`estimators.ExactOracle`), on
    a grid of `grid_points` values of t (128 reads as well as 256 here, at half the cost)."""
    from .estimators import ExactOracle

    meter = ExactOracle(device="cpu")
    meter.grid_points = grid_points
    return meter.fit(data, get_schedule(schedule))


def reference_readings(meter, data, ts, n: int = 512, seed: int = 0) -> np.ndarray:
    """The meter's mean calibrated reading of fresh true states x_t of `data` at each t (S,):
    the zero point of a shift, without interpolating the meter's stored reference curve."""
    sch = meter.schedule_
    gen = torch.Generator().manual_seed(seed + 104729)
    out = []
    for t in _np(ts):
        x0 = data.x[torch.randint(len(data), (n,), generator=gen)].double()
        xt = _noised(sch, x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64), t)
        out.append(float(meter.predict(xt)[0].mean()))
    return np.array(out)


def measured_shift(meter, states, ts, reference=None) -> np.ndarray:
    """Per-step shift (S,): the meter's mean calibrated reading of the states minus
    `reference` (per-step readings of true states, e.g. `reference_readings`), by default
    the meter's stored reference curve."""
    ts = _np(ts)
    ref = meter.reference(ts) if reference is None else _np(reference)
    return np.array([float(meter.predict(states[i])[0].mean()) for i in range(len(ts))]) - ref


def meter_gain(meter, ts) -> np.ndarray:
    """d reference / dt of a calibrated meter at ts: how much of a true shift it reports
    (about 1 where it reads well, toward 0 in its blind zones). Predictions are compared
    with a meter's readings after multiplying by this gain."""
    tg, slope = meter.reference_slope()
    return np.interp(_np(ts), tg, slope)


def route_r2(df: pd.DataFrame, t_range=(0.2, 0.9), gain: bool = True,
             columns=ROUTES) -> dict[str, float]:
    """R^2 of each prediction column against `measured` for t in t_range (predictions times
    the meter's gain when `gain` and the frame has a gain column)."""
    m = (df.t >= t_range[0]) & (df.t <= t_range[1])
    g = df.gain[m] if gain and "gain" in df else 1.0
    return {c: r2_score(df.measured[m], df[c][m] * g) for c in columns}


def simulate_run(data, schedule: Schedule | str, *, error: str = "noise", scale: float = 0.05,
                 steps: int = 16, n: int = 256, n_sub: int = 16, diffusion: float = 2.0,
                 seed: int = 0):
    """A simulated run on mixture data: the exact denoiser plus `error`, Euler-Maruyama at
    `steps`, and its reference on the same initial noise and Brownian path at steps * n_sub
    with the exact denoiser. Returns (ts (S,), states (S, N, d), reference (S, N, d))."""
    from .data import MixtureDenoiser

    mixture = data.mixture
    exact = MixtureDenoiser(mixture, schedule)
    model = exact if scale == 0 else PerturbedDenoiser(exact, error, scale, seed + 7)
    gen = torch.Generator().manual_seed(seed)
    ts = np.linspace(1.0, 0.0, steps + 1)
    x_T = torch.randn(n, mixture.dim, generator=gen)
    fine = brownian_increments(ts, (n, mixture.dim), n_sub, gen)
    states = []
    sample_em_path(model, x_T.clone(), ts, coarsen_increments(fine), diffusion=diffusion,
                   callback=lambda info: states.append(info["x"].clone()))
    ref, _ = reference_trajectory(exact, x_T.clone(), ts, fine, diffusion=diffusion)
    return ts[:-1], torch.stack(states), ref


def compare_routes(data, schedule: Schedule | str, *, meter=None, reference=None,
                   **run) -> pd.DataFrame:
    """`simulate_run` on mixture data, measured by `meter` (default the calibrated exact
    oracle) against `reference` readings of true states (default `reference_readings`;
    pass them in to reuse them across runs with the same steps), next to the four routes'
    predictions per step.

    Columns: t, measured, a, b, c, d, sigma_e, radial_share, mean_share, orth_share.
    """
    schedule = get_schedule(schedule)
    meter = exact_meter(data, schedule) if meter is None else meter
    ts, states, ref = simulate_run(data, schedule, **run)
    df = predict_routes(states, ts, schedule, m2=data.mixture.second_moment(), reference=ref,
                        basis=mean_span(data.mixture))
    if reference is None:
        reference = reference_readings(meter, data, ts)
    df.insert(1, "measured", measured_shift(meter, states, ts, reference))
    df.insert(2, "gain", meter_gain(meter, ts))
    return df


def _noised(schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
    return (float(schedule.alpha(t)) * x0 + float(schedule.sigma(t)) * eps).float()


def injection_experiment(data, schedule: Schedule | str, *, ts=None, ratios=(0.1, 0.2, 0.3),
                         n: int = 512, meter=None, seed: int = 0) -> pd.DataFrame:
    """Inject isotropic noise e ~ N(0, (r sigma_t)^2 I) into true states x_t of mixture data
    and compare the meter's measured shift with the predictions.

    One row per (t, r): measured (meter reading of x_t + e minus that of x_t, paired),
    true_shift (the meter's response to a state truly at t_exact), gain, exact and first
    (the proposition), and routes a, b, c, d with x_t as the reference.
    """
    schedule = get_schedule(schedule)
    meter = exact_meter(data, schedule) if meter is None else meter
    ts = np.linspace(0.05, 0.95, 19) if ts is None else _np(ts)
    gen = torch.Generator().manual_seed(seed)
    m2, basis = data.mixture.second_moment(), mean_span(data.mixture)
    rows = []
    for t in ts:
        x0 = data.x[torch.randint(len(data), (n,), generator=gen)].double()
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        xt = _noised(schedule, x0, eps, t)
        base = float(meter.predict(xt)[0].mean())
        for r in ratios:
            se = r * float(schedule.sigma(t))
            xh = xt + se * torch.randn(xt.shape, generator=gen)
            te = float(t_exact(t, se, schedule))
            rows.append({
                "t": float(t), "r": r, "sigma_e": se,
                "measured": float(meter.predict(xh)[0].mean()) - base,
                "true_shift": float(meter.predict(_noised(schedule, x0, eps, te))[0].mean()) - base,
                "exact": te - t, "first": float(delta_first_order(t, se, schedule)),
                "a": route_a(xh, xt, t, schedule), "b": route_b(xh, t, schedule, m2),
                "c": route_c(xh, xt, t, schedule, m2), "d": route_d(xh, xt, t, schedule, basis),
            })
    df = pd.DataFrame(rows)
    df.insert(3, "gain", meter_gain(meter, df.t))
    return df
