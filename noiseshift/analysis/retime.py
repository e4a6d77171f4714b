"""A shift-aware time grid: steps placed so that each state's read level matches its label.

A sampler at a few steps lands its states off schedule: the state meant for t_i reads, by
the exact meter of a perfect model (`audit`), as t_i + delta_i. Relabelling that state
t_i + delta_i and stepping from there is the same as running on the grid whose i-th point
is t_i + delta_i; on that grid the states land differently again, so the move is repeated:

    grid_0 = the sampler's own grid;  grid_{k+1}[i] = grid_k[i] + damping * delta_k[i]

with the first point (the exact initial state) and the last (the end of sampling) kept,
until the mean |delta| stops falling. `retime` returns every iterate's audit and the grid
with the smallest mean |delta|; `retime_builtin` runs it on a built-in sampler.
`regrid` is the one move, usable on readings from a recorded run too (one move, no rerun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import NoiseshiftError
from ..schedules import get_schedule
from ..timegrid import check_timesteps, timesteps
from .audit import AuditResult, audit_builtin
from .simulation import exact_meter

__all__ = ["RetimeResult", "regrid", "retime", "retime_builtin"]

# Neighbouring grid points are kept at least this far apart (in t), so that a large shift
# estimate cannot fold the grid.
MIN_GAP = 1e-3


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


def regrid(ts, shift, damping: float = 1.0) -> np.ndarray:
    """One move: grid point i (0 < i < last) goes to ts[i] + damping * shift[i], where
    shift[i] is how much noisier than ts[i] the state there reads (one value per state the
    model saw: len(ts) - 1 of them, or len(ts)). Kept strictly decreasing, at least
    `MIN_GAP` apart, inside (ts[-1], ts[0])."""
    ts = check_timesteps(ts).numpy()
    shift = np.asarray(shift, dtype=np.float64)
    if len(shift) not in (len(ts) - 1, len(ts)) or not np.isfinite(shift).all():
        raise NoiseshiftError(f"need a finite shift for each of the {len(ts) - 1} states, "
                              f"got {len(shift)}")
    new = ts.copy()
    new[1:-1] = ts[1:-1] + damping * shift[1:len(ts) - 1]
    lo = ts[-1]
    for i in range(1, len(ts) - 1):  # top down: below the previous point, above the rest
        room = (len(ts) - 1 - i) * MIN_GAP
        new[i] = min(max(new[i], lo + room), new[i - 1] - MIN_GAP)
    return new


def retime(audit: Callable[[np.ndarray], AuditResult], ts, *, iterations: int = 3,
           damping: float = 1.0) -> RetimeResult:
    """Iterate `regrid` from grid ``ts``: ``audit(grid)`` runs the sampler on a grid and
    reads its states (per-step ``shift`` in its table, one row per state)."""
    if iterations < 0:
        raise NoiseshiftError(f"iterations must be >= 0, got {iterations}")
    grids, audits = [check_timesteps(ts).numpy()], []
    for k in range(iterations + 1):
        audits.append(audit(grids[-1]))
        if k < iterations:
            grids.append(regrid(grids[-1], audits[-1].table["shift"].to_numpy(), damping))
    best = int(np.argmin([a.mean_abs.value for a in audits]))
    return RetimeResult(grids, audits, best)


def retime_builtin(data, schedule="linear", *, sampler: str = "euler-maruyama",
                   steps: int = 16, n: int = 512, seed: int = 0, iterations: int = 3,
                   damping: float = 1.0, start=None, n_boot: int = 200,
                   **sampler_kw) -> RetimeResult:
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

    res = retime(audit, ts, iterations=iterations, damping=damping)
    res.meta = {"sampler": sampler, "schedule": schedule.to_dict(), "n": n, "seed": seed}
    return res
