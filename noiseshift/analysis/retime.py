"""A shift-aware time grid: steps placed so that each state's read level matches its label.

A sampler at a few steps lands its states off schedule: the state meant for t_i reads, by
the exact meter of a perfect model (`audit`), as t_i + delta_i. Relabelling that state
t_i + delta_i and stepping from there is the same as running on the grid whose i-th point
is t_i + delta_i; on that grid the states land differently again, so the move is repeated:

    grid_0 = the sampler's own grid;  grid_1[i] = grid_0[i] + damping * delta_0[i]

with the first point (the exact initial state) and the last (the end of sampling) kept.
That first move assumes a state's read level does not depend on its own grid point (delta
falls one for one as the point rises); where it does (the last states of DDIM, which land
cleaner the lower they are placed), moving by delta diverges, so there later moves are
secant steps on the point's delta(t), grid[i] - delta[i] / slope[i], with a rising slope
from the last two iterates (at least `MIN_SLOPE`) and each move at most `MAX_MOVE` times
|delta|. `retime` returns every iterate's audit and the grid
with the smallest mean |delta|; `retime_builtin` runs it on a built-in sampler.
`regrid` is the one move, usable on readings from a recorded run too (one move, no rerun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ..errors import NoiseshiftError
from ..io import open_estimates
from ..schedules import get_schedule
from ..timegrid import check_timesteps, timesteps
from .audit import AuditResult, audit_builtin
from .simulation import exact_meter
from .statistics import LEVEL

__all__ = ["RetimeResult", "regrid", "regrid_from_estimates", "resolved_mask", "retime",
           "retime_builtin"]

# Neighbouring grid points are kept at least this far apart (in t), so that a large shift
# estimate cannot fold the grid.
MIN_GAP = 1e-3
# A secant slope d delta / d t is kept at least this far from 0 and each move at most
# MAX_MOVE |delta|: delta is measured with sampling noise, and a near-flat secant through
# two noisy points would throw the point across the grid.
MIN_SLOPE = 0.25
MAX_MOVE = 2.0


@dataclass
class RetimeResult:
    """The iterates (grid, its audit) and the chosen grid (the smallest mean |shift|)."""

    grids: list[np.ndarray]
    audits: list[AuditResult]
    best: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def grid(self) -> np.ndarray:
        return self.grids[self.best]

    def to_dict(self) -> dict:
        return {"timesteps": [float(v) for v in self.grid], "best_iteration": self.best,
                **self.meta,
                "iterations": [{"timesteps": [float(v) for v in g],
                                "mean_abs_shift": a.mean_abs.to_dict(), "verdict": a.verdict}
                               for g, a in zip(self.grids, self.audits, strict=True)]}


def regrid(ts, shift, damping: float = 1.0, slope=None) -> np.ndarray:
    """One move: grid point i (0 < i < last) goes to ts[i] - damping * shift[i] / slope[i]
    (slope -1 when None: ts[i] + damping * shift[i]), where shift[i] is how much noisier
    than ts[i] the state there reads (one value per state the model saw: len(ts) - 1 of
    them, or len(ts)). Kept strictly decreasing, at least `MIN_GAP` apart, inside
    (ts[-1], ts[0])."""
    ts = check_timesteps(ts).numpy()
    shift = np.asarray(shift, dtype=np.float64)
    if len(shift) not in (len(ts) - 1, len(ts)) or not np.isfinite(shift).all():
        raise NoiseshiftError(f"need a finite shift for each of the {len(ts) - 1} states, "
                              f"got {len(shift)}")
    new, d = ts.copy(), shift[1:len(ts) - 1]
    s = -np.ones_like(d) if slope is None else np.asarray(slope, dtype=np.float64)[1:len(d) + 1]
    s = np.where(np.abs(s) < MIN_SLOPE, np.where(s < 0, -MIN_SLOPE, MIN_SLOPE), s)
    move = np.clip(-damping * d / s, -MAX_MOVE * np.abs(d), MAX_MOVE * np.abs(d))
    new[1:-1] = ts[1:-1] + move
    lo = ts[-1]
    for i in range(1, len(ts) - 1):  # top down: below the previous point, above the rest
        room = (len(ts) - 1 - i) * MIN_GAP
        new[i] = min(max(new[i], lo + room), new[i - 1] - MIN_GAP)
    return new


def retime(audit: Callable[[np.ndarray], AuditResult], ts, *, iterations: int = 3,
           damping: float = 1.0, resolved: bool = False,
           secant: bool = True) -> RetimeResult:
    """Iterate `regrid` from grid ``ts``: ``audit(grid)`` runs the sampler on a grid and
    reads its states (per-step ``shift`` in its table, one row per state). With
    ``resolved``, a point moves only while its state's shift is resolved (`resolved_mask`):
    an unresolved shift is as likely sampling noise, and chasing it moves the grid for
    nothing. Without
    ``secant`` every move is the plain one (for labels, which do not move their own state:
    delta falls one for one as the label rises, and a secant would read the earlier
    labels' moves as this one's)."""
    if iterations < 0:
        raise NoiseshiftError(f"iterations must be >= 0, got {iterations}")
    grids, audits = [check_timesteps(ts).numpy()], []
    for k in range(iterations + 1):
        audits.append(audit(grids[-1]))
        if k < iterations:
            slope = _slope(grids, audits) if secant else None
            grids.append(regrid(grids[-1], _shift(audits[-1], resolved), damping, slope))
    best = int(np.argmin([a.mean_abs.value for a in audits]))
    return RetimeResult(grids, audits, best)


def _shift(audit: AuditResult, resolved: bool = False) -> np.ndarray:
    """Each state's shift; with ``resolved``, 0 where it is not resolved (`resolved_mask`)."""
    shift = audit.table["shift"].to_numpy()
    return np.where(resolved_mask(audit.table), shift, 0.0) if resolved else shift


def resolved_mask(table, level: float = LEVEL) -> np.ndarray:
    """The states whose shift is resolved over the whole trajectory: |shift| beyond its
    interval widened to a family-wise ``level`` over the S states (Bonferroni: each state
    at 1 - (1 - level) / S, its half-width scaled by the normal quantiles' ratio). Read one
    by one at 95%, one of 10 unshifted states would be "resolved" by chance, and moving it
    moves every later state (a relabel at DDIM's second step raised the testbed's FD)."""
    shift = table["shift"].to_numpy()
    lo, hi = table["shift_lo"].to_numpy(), table["shift_hi"].to_numpy()
    z = NormalDist()
    widen = z.inv_cdf(1 - (1 - level) / (2 * len(shift))) / z.inv_cdf((1 + level) / 2)
    half = np.where(shift >= 0, shift - lo, hi - shift)
    return np.abs(shift) > widen * half


def _slope(grids, audits) -> np.ndarray | None:
    """Each point's secant d delta / d t over the last two iterates (None before two; -1
    where the point did not move)."""
    if len(audits) < 2:
        return None
    dt = grids[-1][:-1] - grids[-2][:-1]
    dd = _shift(audits[-1]) - _shift(audits[-2])
    moved = np.abs(dt) > 1e-9
    secant = np.where(moved, dd / np.where(moved, dt, 1.0), -1.0)
    # Only a rising delta overrides the one-for-one slope: there the plain move diverges;
    # elsewhere a noisy secant did worse than it (Euler-Maruyama, 16 steps).
    return np.where(secant > 0, secant, -1.0)


def retime_builtin(data, schedule="linear", *, sampler: str = "euler-maruyama",
                   steps: int = 16, n: int = 512, seed: int = 0, iterations: int = 3,
                   damping: float = 1.0, start=None, n_boot: int = 200,
                   resolved: bool = False, **sampler_kw) -> RetimeResult:
    """`retime` for a built-in sampler on mixture ``data`` (`audit.default_mixture`, or
    `audit.fit_mixture` of the user's data) with its exact denoiser and meter, from the
    even grid of ``steps`` steps (or ``start``). Every iterate uses the same seed."""
    schedule = get_schedule(schedule)
    meter = exact_meter(data, schedule)
    ts = timesteps(steps).numpy() if start is None else start

    def audit(grid):
        return audit_builtin(data, schedule, sampler=sampler, n=n, seed=seed, meter=meter,
                             n_boot=n_boot, timesteps=[float(v) for v in grid],
                             **sampler_kw)

    res = retime(audit, ts, iterations=iterations, damping=damping, resolved=resolved)
    res.meta = {"sampler": sampler, "schedule": schedule.to_dict(), "n": n, "seed": seed}
    return res


def regrid_from_estimates(path, run: str, estimator: str | None = None,
                          damping: float = 1.0, t_end: float = 0.0) -> dict:
    """One `regrid` move from a recorded run's readings (`noiseshift estimate`): the grid is
    the run's recorded t of every step, then ``t_end``; each state's shift is the mean of its
    `Estimates.delta` (calibrated reading minus true states' reading). One move only: there
    is no rerun to read. Every step must be recorded (no --record-every)."""
    with open_estimates(path) as f:
        if run not in f.runs:
            raise NoiseshiftError(f"no run {run!r} in {path} (runs: {', '.join(f.runs)})")
        names = f.estimators(run)
        name = estimator or names[0]
        if name not in names:
            raise NoiseshiftError(f"run {run!r} has no readings by {name!r} (has: "
                                  f"{', '.join(names)})")
        est = f.get(run, name)
        ts, shift = np.append(est.t, t_end), est.delta.mean(1)
    grid = regrid(ts, shift, damping)
    return {"timesteps": [float(v) for v in grid], "source": str(path), "run": run,
            "estimator": name, "shift": [float(v) for v in shift],
            "from": [float(v) for v in ts]}
