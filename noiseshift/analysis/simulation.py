"""Simulated runs with known error, their reference trajectories, and the experiments that
score the routes of `theory` against a calibrated meter.

A reference trajectory shares the coarse run's initial noise and Brownian path and integrates
the same reverse SDE with many more steps: `brownian_increments` draws the fine path,
`coarsen_increments` sums it for the coarse run, and `bridge_increments` refines the coarse
increments of an existing run (a Brownian bridge: exact conditional law given the sums). Both
runs are the real `sampling.sample_euler_maruyama`, fed the path by `BrownianNoise` (its
`noise_sampler`).

Predictions are compared with a calibrated meter (on mixtures the exact posterior p(t | x),
`exact_meter`): `compare_routes` runs the sampler with simulated model error (`PerturbedDenoiser`)
and `injection_experiment` adds isotropic noise to true states. A meter reports a true shift
times its gain, the slope of its reference curve (`meter_gain`, ~1 where it reads well, ~0 in a
blind zone), so `theory.route_r2` scores the predictions times that gain.

What these experiments show (tests/test_analysis_simulation.py pins the robust parts): the
routes agree with the exact posterior when the data carry little signal energy (small
E|x0|^2), where the noise level is read from the state's spread; with well separated,
image-like modes the posterior also reads the signal along the mode means, which isotropic
error leaves alone, so the proposition overstates the measured shift late in t under VP, and
the second-moment routes (b), (c) fail (under the linear schedule they flip sign below
t* = m2 / (1 + m2)). Route (a) fails whenever the deviation is not noise-like (mode switching
and time offsets put it in the mean span and along x); route (d) fixes that for bias-like
error.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import MixtureDenoiser
from ..defaults import DEFAULT_STEPS
from ..errors import NoiseshiftError
from ..estimators.oracle import ExactOracle
from ..sampling import sample_euler_maruyama
from ..schedules import Schedule, get_schedule
from .theory import (
    as_float64,
    delta_first_order,
    mean_span,
    path_scale,
    predict_routes,
    route_a,
    route_b,
    route_c,
    route_d,
    t_exact,
    t_exact_log_snr,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BrownianNoise",
    "PerturbedDenoiser",
    "bridge_increments",
    "brownian_increments",
    "coarsen_increments",
    "compare_routes",
    "exact_meter",
    "fine_grid",
    "injection_experiment",
    "measured_shift",
    "meter_gain",
    "reference_readings",
    "reference_trajectory",
    "simulate_run",
]


# -- Brownian paths and the reference trajectory -----------------------------------------------

def fine_grid(ts, n_sub: int) -> np.ndarray:
    """Each interval of the decreasing grid ts split into n_sub equal steps (the coarse
    times are every n_sub-th fine time)."""
    ts = as_float64(ts)
    parts = [np.linspace(a, b, n_sub + 1)[:-1] for a, b in zip(ts[:-1], ts[1:], strict=True)]
    return np.concatenate(parts + [ts[-1:]])


def brownian_increments(ts, shape, n_sub: int = 1, generator: torch.Generator | None = None):
    """Fine Brownian increments for the grid ts refined n_sub times: (S, n_sub, *shape),
    float64, increment k of step i with variance |ts[i+1] - ts[i]| / n_sub."""
    ts = as_float64(ts)
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


class BrownianNoise:
    """A `noise_sampler(t, t_next)` (k-diffusion's) that replays given Brownian increments:
    on the step from ts[i] it returns dW[i] / sqrt(h), the standard normal draw that the
    sampler scales by sqrt(g^2 h). dW (S, ...) has variance h = ts[i] - ts[i+1] per step."""

    def __init__(self, ts, dW: torch.Tensor):
        self.dW = dW
        self.step = {float(t): i for i, t in enumerate(as_float64(ts))}

    def __call__(self, t: float, t_next: float) -> torch.Tensor:
        return self.dW[self.step[float(t)]] / math.sqrt(t - t_next)


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

    grid = fine_grid(ts, n_sub)
    dW = fine.reshape(steps * n_sub, *fine.shape[2:])
    out = sample_euler_maruyama(model, x, grid, y=y, callback=keep, diffusion=diffusion,
                                final_denoise=final_denoise,
                                noise_sampler=BrownianNoise(grid, dW))
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
        return self.schedule.convert(x0, "x0", self.prediction, x, t).to(x.dtype)


def exact_meter(data, schedule: Schedule | str, grid_points: int = 128):
    """The calibrated exact-posterior meter for mixture data (`estimators.ExactOracle`), on
    a grid of `grid_points` values of t (128 reads as well as 256 here, at half the cost)."""
    meter = ExactOracle(device="cpu")
    meter.grid_points = grid_points
    return meter.fit(data, get_schedule(schedule))


def _true_states(data, n: int, gen: torch.Generator):
    """n data points drawn from `data` and fresh noise for them (float64)."""
    x0 = data.x[torch.randint(len(data), (n,), generator=gen)].double()
    return x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64)


def _mean_reading(meter, x) -> float:
    return float(meter.predict(x)[0].mean())


def reference_readings(meter, data, ts, n: int = 512, seed: int = 0) -> np.ndarray:
    """The meter's mean calibrated reading of fresh true states x_t of `data` at each t (S,):
    the zero point of a shift, without interpolating the meter's stored reference curve."""
    sch = meter.schedule_
    gen = torch.Generator().manual_seed(seed + 104729)
    out = []
    for t in as_float64(ts):
        x0, eps = _true_states(data, n, gen)
        out.append(_mean_reading(meter, sch.add_noise(x0, eps, t).float()))
    return np.array(out)


def measured_shift(meter, states, ts, reference=None) -> np.ndarray:
    """Per-step shift (S,): the meter's mean calibrated reading of the states minus
    `reference` (per-step readings of true states, e.g. `reference_readings`), by default
    the meter's stored reference curve."""
    ts = as_float64(ts)
    ref = meter.reference(ts) if reference is None else as_float64(reference)
    return np.array([_mean_reading(meter, states[i]) for i in range(len(ts))]) - ref


def meter_gain(meter, ts) -> np.ndarray:
    """d reference / dt of a calibrated meter at ts: how much of a true shift it reports
    (about 1 where it reads well, toward 0 in its blind zones). Predictions are compared
    with a meter's readings after multiplying by this gain."""
    tg, slope = meter.reference_slope()
    return np.interp(as_float64(ts), tg, slope)


# -- the experiments ---------------------------------------------------------------------------

def simulate_run(data, schedule: Schedule | str, *, error: str = "noise", scale: float = 0.05,
                 steps: int = DEFAULT_STEPS, n: int = 256, n_sub: int = 16, diffusion: float = 2.0,
                 seed: int = 0):
    """A simulated run on mixture data: the exact denoiser plus `error`, Euler-Maruyama at
    `steps`, and its reference on the same initial noise and Brownian path at steps * n_sub
    with the exact denoiser. Returns (ts (S,), states (S, N, d), reference (S, N, d))."""
    mixture = data.mixture
    exact = MixtureDenoiser(mixture, schedule)
    model = exact if scale == 0 else PerturbedDenoiser(exact, error, scale, seed + 7)
    gen = torch.Generator().manual_seed(seed)
    ts = np.linspace(1.0, 0.0, steps + 1)
    x_T = torch.randn(n, mixture.dim, generator=gen)
    fine = brownian_increments(ts, (n, mixture.dim), n_sub, gen)
    states = []
    sample_euler_maruyama(model, x_T.clone(), ts, diffusion=diffusion,
                          noise_sampler=BrownianNoise(ts, coarsen_increments(fine)),
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


def injection_experiment(data, schedule: Schedule | str, *, ts=None, ratios=(0.1, 0.2, 0.3),
                         n: int = 512, meter=None, seed: int = 0,
                         coordinate: str = "log-snr") -> pd.DataFrame:
    """Inject isotropic noise e ~ N(0, (r sigma_t)^2 I) into true states x_t and compare the
    meter's measured shift with the predictions.

    `coordinate` says which t' the injected state is compared with. "log-snr" (default):
    x_t + e has the log-SNR of t' = `theory.t_exact_log_snr`, and times alpha(t')/alpha(t)
    it is exactly a state at t' (a deterministic map, `theory.path_scale`), so the meter
    reads the converted state; this holds under every schedule. "sigma": the state as is,
    against sigma(t')^2 = sigma_t^2 + sigma_e^2 (`theory.t_exact`): right under the linear
    schedule only approximately and wrong under VP (where x_t + e is off the path: its scale
    exceeds any state's at t').

    One row per (t, r): measured (meter reading minus that of x_t, paired), true_shift (the
    meter's response to the state truly at t'), gain, exact (t' - t) and first (the
    proposition); on mixture data also routes a, b, c, d with x_t as the reference. `data`
    is any Dataset (the meter defaults to the exact oracle, which needs a mixture).
    """
    import pandas as pd

    if coordinate not in ("log-snr", "sigma"):
        raise NoiseshiftError(f"coordinate must be log-snr or sigma, not {coordinate!r}")
    schedule = get_schedule(schedule)
    meter = exact_meter(data, schedule) if meter is None else meter
    ts = np.linspace(0.05, 0.95, 19) if ts is None else as_float64(ts)
    gen = torch.Generator().manual_seed(seed)
    routes = _injection_routes(data, schedule)
    rows = []
    for t in ts:
        x0, eps = _true_states(data, n, gen)
        rows += _injected(meter, schedule, x0, eps, t, ratios, coordinate, gen, routes)
    df = pd.DataFrame(rows)
    df.insert(3, "gain", meter_gain(meter, df.t))
    return df


def _injected(meter, schedule, x0, eps, t, ratios, coordinate, gen, routes) -> list[dict]:
    """`injection_experiment`'s rows at one t: the true states x_t of (x0, eps), and x_t with
    noise r sigma_t injected for each ratio r, read by the meter."""
    xt = schedule.add_noise(x0, eps, t).float()
    base = _mean_reading(meter, xt)
    rows = []
    for r in ratios:
        se = r * float(schedule.sigma(t))
        xh = xt + se * torch.randn(xt.shape, generator=gen)
        if coordinate == "sigma":
            te, read = float(t_exact(t, se, schedule)), xh
        else:
            te = float(t_exact_log_snr(t, se, schedule))
            read = xh * float(path_scale(t, te, schedule))
        truly = schedule.add_noise(x0, eps, te).float()
        rows.append({
            "t": float(t), "r": r, "sigma_e": se,
            "measured": _mean_reading(meter, read) - base,
            "true_shift": _mean_reading(meter, truly) - base,
            "exact": te - t, "first": float(delta_first_order(t, se, schedule)),
            **routes(xh, xt, t, se),
        })
    return rows


def _injection_routes(data, schedule):
    """routes(xh, xt, t, se) -> {a, b, c, d} on mixture data (they need its mean span), {}
    otherwise."""
    if getattr(data, "mixture", None) is None:
        return lambda xh, xt, t, se: {}
    m2, basis = data.mixture.second_moment(), mean_span(data.mixture)
    return lambda xh, xt, t, se: {
        "a": route_a(xh, xt, t, schedule), "b": route_b(xh, t, schedule, m2),
        "c": route_c(xh, xt, t, schedule, m2), "d": route_d(xh, xt, t, schedule, basis)}
