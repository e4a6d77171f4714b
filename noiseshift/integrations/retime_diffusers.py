"""A shift-aware grid for a diffusers scheduler (`analysis.retime` on `audit_scheduler`'s
loop), and custom grids passed through to a scheduler.

Which schedulers take a custom grid (diffusers 0.42, ``set_timesteps``): ``timesteps=``
(integer training timesteps) DDPM, DPMSolverMultistep, Heun, LCM, Euler; ``sigmas=``
Euler, FlowMatchEuler, UniPC. DDIMScheduler takes neither: its step finds the previous
timestep by a fixed stride. Its update is first-order DPM-Solver++, so the DDIM grid is run
(and emitted) as DPMSolverMultistepScheduler(solver_order=1, algorithm_type='dpmsolver++',
final_sigmas_type='zero') with ``timesteps=``: at the same timesteps it gives DDIM's states
and, where DDIM's last step ends at alpha = 1 (set_alpha_to_one, trailing spacing), its
samples.

Grids are in the audit's family time (vp-cosine for VP schedulers; `levels.map_level`); a
VP grid becomes integer timesteps (each point's nearest by log-SNR) and Euler's VE sigmas.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np

from ..analysis.audit import audit_states
from ..analysis.retime import RetimeResult, retime
from ..analysis.simulation import exact_meter
from ..analysis.statistics import N_BOOT
from ..errors import NoiseshiftError
from ..schedules import get_schedule
from .audit_diffusers import build_scheduler, check_scheduler, run_scheduler
from .levels import VP_FAMILY, map_level
from .schedulers import SchedulerView

DDIM_AS = ("DPMSolverMultistepScheduler",
           {"solver_order": 1, "algorithm_type": "dpmsolver++",
            "final_sigmas_type": "zero"})

__all__ = ["DDIM_AS", "custom_grid", "retime_scheduler", "timestep_levels", "to_diffusers"]


def timestep_levels(scheduler) -> np.ndarray:
    """The family t of every training timestep 0..N-1 of a VP scheduler (increasing)."""
    ac = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    return np.array([map_level(a ** 0.5, (1 - a) ** 0.5, VP_FAMILY)[0] for a in ac])


def to_diffusers(scheduler, grid) -> dict:
    """A family-t grid (decreasing, last point the end) as the lists a VP scheduler takes:
    ``timesteps`` (the nearest training timestep of each point but the last, kept strictly
    decreasing) and ``sigmas`` (Euler's sqrt((1 - abar) / abar) at the grid, then 0)."""
    levels = timestep_levels(scheduler)
    steps = [int(np.abs(levels - t).argmin()) for t in grid[:-1]]
    for i in range(1, len(steps)):  # rounding must not merge two steps
        steps[i] = min(steps[i], steps[i - 1] - 1)
    if steps[-1] < 0:
        raise NoiseshiftError("the grid is finer than the scheduler's training timesteps")
    sch = get_schedule(VP_FAMILY)
    sig = [float(sch.sigma(t) / sch.alpha(t)) for t in grid[:-1]] + [0.0]
    return {"timesteps": steps, "sigmas": sig}


@contextlib.contextmanager
def custom_grid(scheduler, **grid):
    """While inside, ``scheduler.set_timesteps`` (on the instance) ignores the step count it
    is called with and sets ``grid`` (``timesteps=`` or ``sigmas=``); one line where the
    scheduler takes neither."""
    (key, values), = grid.items()
    original = scheduler.set_timesteps
    if key not in inspect.signature(original).parameters:
        name = type(scheduler).__name__
        hint = (f"; run the same update as {DDIM_AS[0]} with {DDIM_AS[1]}"
                if name == "DDIMScheduler" else "")
        raise NoiseshiftError(f"{name} takes no custom {key} (diffusers' set_timesteps)"
                              f"{hint}")

    def set_timesteps(num_inference_steps=None, device=None, **kw):
        return original(device=device, **{key: list(values)})

    scheduler.set_timesteps = set_timesteps
    try:
        yield scheduler
    finally:
        del scheduler.set_timesteps


def retime_scheduler(data, name: str, *, steps: int = 10, spacing: str | None = None,
                     config: dict | None = None, n: int = 512, seed: int = 0,
                     iterations: int = 3, damping: float = 1.0,
                     n_boot: int = N_BOOT) -> RetimeResult:
    """`retime` of a VP diffusers scheduler (DDIM runs as `DDIM_AS`) on mixture ``data``
    with the exact model, from the scheduler's own grid at ``steps`` and ``spacing``."""
    ddim = name.removeprefix("diffusers:") == "DDIMScheduler"
    cls, extra = DDIM_AS if ddim else (name, {})
    scheduler = build_scheduler(cls, spacing, {**(config or {}), **extra})
    check_scheduler(scheduler, steps)
    if SchedulerView(scheduler).family != VP_FAMILY:
        raise NoiseshiftError("retime runs VP schedulers (alphas_cumprod); for flow "
                              "matching use the built-in samplers' grid")
    meter = exact_meter(data, VP_FAMILY)

    def audit(grid):
        with custom_grid(scheduler, timesteps=to_diffusers(scheduler, grid)["timesteps"]):
            ts, states, _ = run_scheduler(scheduler, data.mixture, steps, n, seed)
        return audit_states(f"{cls} retimed", ts, states, meter, data, steps=steps,
                            n_boot=n_boot, seed=seed)

    ts0, _, _ = run_scheduler(scheduler, data.mixture, steps, 8, seed)
    res = retime(audit, np.append(ts0, 0.0), iterations=iterations, damping=damping)
    res.meta = {"scheduler": cls, "config": extra, "spacing": spacing, "n": n, "seed": seed,
                "diffusers": to_diffusers(scheduler, res.grid)}
    return res
