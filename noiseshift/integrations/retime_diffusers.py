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

Grids are in the audit's family time (vp-cosine for VP schedulers, linear for flow matching;
`levels.map_level`); a VP grid becomes integer timesteps (each point's nearest by log-SNR)
and Euler's VE sigmas, a flow grid the scheduler's sigmas (t = sigma). `custom_grid` hands
either to ``set_timesteps`` and checks that the scheduler holds what it was given.

A static relabel (`relabel_scheduler`) keeps the scheduler's grid and moves instead the
timestep the network is handed at each step (`relabelled`), to where the state reads.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import torch

from ..analysis.audit import audit_states
from ..analysis.retime import RetimeResult, retime
from ..analysis.simulation import exact_meter
from ..analysis.statistics import N_BOOT
from ..errors import NoiseshiftError
from ..schedules import get_schedule
from .audit_diffusers import _config as config_dict
from .audit_diffusers import build_scheduler, check_scheduler, run_scheduler
from .levels import FLOW_FAMILY, VP_FAMILY, map_level
from .schedulers import SchedulerView

DDIM_AS = ("DPMSolverMultistepScheduler",
           {"solver_order": 1, "algorithm_type": "dpmsolver++",
            "final_sigmas_type": "zero"})

__all__ = ["DDIM_AS", "custom_grid", "flow_shift", "model_timesteps", "pick_grid",
           "relabel_map", "relabel_scheduler", "relabelled", "retime_scheduler", "sigma_kind",
           "timestep_levels", "to_diffusers", "unshift"]


def timestep_levels(scheduler) -> np.ndarray:
    """The family t of every training timestep 0..N-1 of a VP scheduler (increasing)."""
    ac = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    return np.array([map_level(a ** 0.5, (1 - a) ** 0.5, VP_FAMILY)[0] for a in ac])


def to_diffusers(scheduler, grid) -> dict:
    """A family-t grid (decreasing, last point the end) as the lists a scheduler takes. VP:
    ``timesteps`` (the nearest training timestep of each point but the last, kept strictly
    decreasing) and k-style ``sigmas`` (sqrt((1 - abar) / abar) at the grid, then 0); flow
    matching: its ``sigmas``, which are the linear family's t. ``sigmas_kind`` says which
    sigmas (`sigma_kind`)."""
    if SchedulerView(scheduler).family == FLOW_FAMILY:
        return {"sigmas": [float(v) for v in grid], "sigmas_kind": "flow"}
    levels = timestep_levels(scheduler)
    steps = [int(np.abs(levels - t).argmin()) for t in grid[:-1]]
    for i in range(1, len(steps)):  # rounding must not merge two steps
        steps[i] = min(steps[i], steps[i - 1] - 1)
    if steps[-1] < 0:
        raise NoiseshiftError("the grid is finer than the scheduler's training timesteps")
    sch = get_schedule(VP_FAMILY)
    sig = [float(sch.sigma(t) / sch.alpha(t)) for t in grid[:-1]] + [0.0]
    return {"timesteps": steps, "sigmas": sig, "sigmas_kind": "ve"}


@contextlib.contextmanager
def custom_grid(scheduler, **grid):
    """While inside, ``scheduler.set_timesteps`` (on the instance) ignores the step count it
    is called with and sets ``grid``: ``timesteps=`` (integer training timesteps) or
    ``sigmas=``, the sigmas the scheduler holds after the call, the final one included
    (k-style VE sigmas, or a flow scheduler's shifted sigmas, handed to it unshifted
    (`unshift`) so that its own shift lands on them). One line where the scheduler takes
    neither, or where its config turns the given sigmas into others (Karras, a terminal
    stretch)."""
    (key, values), = grid.items()
    values = [float(v) for v in values] if key == "sigmas" else list(values)
    original = scheduler.set_timesteps
    takes = inspect.signature(original).parameters
    _check_takes(scheduler, key, takes)

    def set_timesteps(num_inference_steps=None, device=None, **kw):
        mu = kw.get("mu")  # flow pipelines' resolution shift
        extra = {"mu": mu} if mu is not None and "mu" in takes else {}
        if key == "timesteps":
            return original(device=device, timesteps=values, **extra)
        out = original(device=device, sigmas=_sigmas_in(scheduler, values, mu), **extra)
        _check_held(scheduler, values)
        return out

    with _replaced(scheduler, "set_timesteps", set_timesteps):
        yield scheduler


def pick_grid(scheduler, grid: dict) -> tuple[str, list]:
    """Which list of ``grid`` (a `noiseshift retime` file's "diffusers" entry, or one list)
    ``scheduler`` gets: its "sigmas" where it takes sigmas of their kind ("sigmas_kind": "ve"
    or "flow"; none said: the scheduler's own), else "timesteps"; one line where neither
    fits."""
    takes = inspect.signature(scheduler.set_timesteps).parameters
    kind = grid.get("sigmas_kind")
    own = sigma_kind(scheduler) if "sigmas" in takes else None
    if "sigmas" in grid and own is not None and kind in (None, own):
        return "sigmas", grid["sigmas"]
    if "timesteps" in grid:
        return "timesteps", grid["timesteps"]
    _check_takes(scheduler, "sigmas", takes)
    raise NoiseshiftError(f"the grid's sigmas are {kind} sigmas; {type(scheduler).__name__} "
                          f"takes {own} sigmas (retime with a scheduler of its family)")


def _check_takes(scheduler, key: str, takes) -> None:
    name = type(scheduler).__name__
    if key not in takes:
        other = "sigmas" if key == "timesteps" else "timesteps"
        hint = (f"; run the same update as {DDIM_AS[0]} with {DDIM_AS[1]}"
                if name == "DDIMScheduler" else
                f"; it takes {other} (a grid file gives both)" if other in takes else "")
        raise NoiseshiftError(f"{name} takes no custom {key} (diffusers' set_timesteps)"
                              f"{hint}")
    if key == "sigmas" and sigma_kind(scheduler) is None:
        raise NoiseshiftError(f"{name}'s sigmas are neither k-style (VE) nor flow sigmas: "
                              f"give it integer timesteps")


def _sigmas_in(scheduler, sigmas: list[float], mu) -> list[float]:
    """What set_timesteps must be handed so that it holds ``sigmas``: a flow scheduler
    appends the final 0 itself and shifts what it is given."""
    if SchedulerView(scheduler).kind != "flow":
        return sigmas
    if sigmas[-1] != 0.0 or scheduler.config.get("invert_sigmas", False):
        raise NoiseshiftError(f"{type(scheduler).__name__} ends its sigmas at 0 itself: the "
                              f"given sigmas must end at 0 (and invert_sigmas be off)")
    return [float(v) for v in unshift(sigmas[:-1], flow_shift(scheduler, mu))]


def _check_held(scheduler, sigmas: list[float]) -> None:
    held = np.asarray(torch.as_tensor(scheduler.sigmas, dtype=torch.float64).cpu())
    want = np.asarray(sigmas, dtype=np.float64)
    if held.shape != want.shape or not np.allclose(held, want, rtol=1e-5, atol=1e-6):
        raise NoiseshiftError(f"{type(scheduler).__name__} turned the given sigmas into "
                              f"others (its config: Karras, exponential or beta sigmas, a "
                              f"terminal shift); first given {want[:2].tolist()}, held "
                              f"{held[:2].tolist()}")


def sigma_kind(scheduler) -> str | None:
    """What ``sigmas=`` means to this scheduler: "ve" (k-style, x = x0 + sigma eps), "flow"
    (x = (1 - sigma) x0 + sigma eps), or None (it takes no sigmas noiseshift can write)."""
    view = SchedulerView(scheduler)
    if view.kind == "ve":
        return "ve"
    return "flow" if view.family == FLOW_FAMILY else None


def flow_shift(scheduler, mu: float | None = None) -> float:
    """The c of a flow-matching scheduler's shift s -> c s / (1 + (c - 1) s): its ``shift``,
    or with dynamic shifting exp(mu) (time_shift_type "exponential") or mu ("linear")."""
    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting", False):
        return float(cfg.get("shift", 1.0))
    if mu is None:
        raise NoiseshiftError(f"{type(scheduler).__name__} shifts by the pipeline's mu "
                              f"(use_dynamic_shifting): call it through its pipeline")
    return float(mu) if cfg.get("time_shift_type") == "linear" else float(np.exp(mu))


def unshift(sigmas, c: float) -> np.ndarray:
    """The sigmas that ``c``'s shift s -> c s / (1 + (c - 1) s) takes to ``sigmas``."""
    s = np.asarray(sigmas, dtype=np.float64)
    return s / (c - (c - 1.0) * s)


def _build(name: str, spacing, config, steps: int):
    """(the scheduler the grid runs on (DDIM as `DDIM_AS`), its config keys)."""
    ddim = name.removeprefix("diffusers:") == "DDIMScheduler"
    cls, extra = DDIM_AS if ddim else (name, {})
    config = {**config_dict(config), **extra}
    scheduler = build_scheduler(cls, spacing, config)
    check_scheduler(scheduler, steps)
    return scheduler, config


def retime_scheduler(data, name: str, *, steps: int = 10, spacing: str | None = None,
                     config: dict | str | None = None, n: int = 512, seed: int = 0,
                     iterations: int = 3, damping: float = 1.0, resolved: bool = False,
                     start=None, n_boot: int = N_BOOT) -> RetimeResult:
    """`retime` of a diffusers scheduler on mixture ``data`` with the exact model, from the
    scheduler's own grid at ``steps`` and ``spacing``: a VP scheduler (DDIM runs as
    `DDIM_AS`) through integer timesteps, a flow-matching one (FlowMatchEuler, its shift
    included) through its sigmas, in the family's t (vp-cosine, linear). ``start``: another
    starting grid (with ``iterations=0``, the audit of a written grid at another seed)."""
    scheduler, config = _build(name, spacing, config, steps)
    view = SchedulerView(scheduler)
    if view.family != VP_FAMILY and view.kind != "flow":
        raise NoiseshiftError(f"retime runs VP schedulers (alphas_cumprod) and flow-matching "
                              f"ones (FlowMatchEuler); {view.name} with flow sigmas is neither")
    key = "timesteps" if view.family == VP_FAMILY else "sigmas"
    meter = exact_meter(data, view.family)

    def audit(grid):
        with custom_grid(scheduler, **{key: to_diffusers(scheduler, grid)[key]}):
            ts, states, _ = run_scheduler(scheduler, data.mixture, steps, n, seed)
        return audit_states(f"{view.name} retimed", ts, states, meter, data, steps=steps,
                            n_boot=n_boot, seed=seed)

    res = retime(audit, _start(scheduler, data, steps, seed, start), iterations=iterations,
                 damping=damping, resolved=resolved)
    res.meta = {"scheduler": view.name, "config": config, "spacing": spacing, "n": n,
                "seed": seed, "family": view.family,
                "diffusers": to_diffusers(scheduler, res.grid)}
    return res


def relabel_scheduler(data, name: str, *, steps: int = 10, spacing: str | None = None,
                      config: dict | str | None = None, n: int = 512, seed: int = 0,
                      iterations: int = 3, damping: float = 1.0, resolved: bool = True,
                      start=None, n_boot: int = N_BOOT) -> RetimeResult:
    """A static relabel of a VP scheduler's own grid: the network gets, at each step, the t
    its state reads at (the exact meter on ``data``'s mixture) instead of the step's t; the
    scheduler's update is unchanged. The labels move as `retime` moves a grid (the states
    are read against the labels the network is handed), with ``resolved`` (default) only
    while a state's shift is resolved. Writes "diffusers": the grid's integer "timesteps"
    and "relabel", the (fractional) training timestep the network gets at each. ``start``:
    other starting labels (family t, the end included), as `retime_scheduler`'s."""
    scheduler, config = _build(name, spacing, config, steps)
    view = SchedulerView(scheduler)
    if view.family != VP_FAMILY or "timesteps" not in inspect.signature(
            scheduler.set_timesteps).parameters:
        raise NoiseshiftError(f"relabel runs VP schedulers on integer timesteps (DDPM, DDIM, "
                              f"DPM-Solver); {view.name} is not one")
    meter = exact_meter(data, VP_FAMILY)
    labels = _start(scheduler, data, steps, seed, start)
    grid = [int(v) for v in scheduler.timesteps]

    def audit(labels):
        table = dict(zip(grid, model_timesteps(scheduler, labels[:-1]), strict=True))
        with custom_grid(scheduler, timesteps=grid):
            _, states, _ = run_scheduler(scheduler, data.mixture, steps, n, seed,
                                         model_t=relabel_map(table))
        return audit_states(f"{view.name} relabelled", labels[:-1], states, meter, data,
                            steps=steps, n_boot=n_boot, seed=seed)

    res = retime(audit, labels, iterations=iterations, damping=damping, resolved=resolved,
                 secant=False)
    res.meta = {"scheduler": view.name, "config": config, "spacing": spacing, "n": n,
                "seed": seed, "family": VP_FAMILY, "relabel": True,
                "diffusers": {"timesteps": grid,
                              "relabel": model_timesteps(scheduler, res.grid[:-1])}}
    return res


def _start(scheduler, data, steps: int, seed: int, start) -> np.ndarray:
    """The scheduler's own grid in family t, then the end (0), or ``start``, checked."""
    if start is None:
        ts0, _, _ = run_scheduler(scheduler, data.mixture, steps, 8, seed)
        return np.append(ts0, 0.0)
    if len(start) != steps + 1:
        raise NoiseshiftError(f"a start grid for {steps} steps needs {steps + 1} points (the "
                              f"end included), got {len(start)}")
    return np.asarray(start, dtype=np.float64)


def model_timesteps(scheduler, ts) -> list[float]:
    """The (fractional) training timestep of each vp-cosine t in ``ts``, placed as
    `levels.table_level` places one: log sigma linear between table entries."""
    ac = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    log_sigma = 0.5 * (np.log1p(-ac) - np.log(ac))  # increasing with the timestep
    sch = get_schedule(VP_FAMILY)
    want = [float(np.log(sch.sigma(t) / sch.alpha(t))) for t in ts]
    # 1e-4 of a timestep is below float32's step there: a label that did not move stays whole.
    return [round(float(v), 4) for v in np.interp(want, log_sigma, np.arange(len(ac)))]


def relabel_map(table: dict):
    """t -> the timestep the network gets: ``table``'s entry for t (integer timesteps,
    matched within 1e-3), else t itself."""
    keys = np.array(sorted(table), dtype=np.float64)

    def model_t(t):
        value = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
        hit = np.abs(keys - value) < 1e-3
        if not hit.any():
            return t
        new = table[int(keys[hit][0])]
        if not isinstance(t, torch.Tensor):
            return new
        # Schedulers hold integer timesteps: their dtype would cut the fraction off.
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return torch.as_tensor(new, dtype=dtype, device=t.device)
    return model_t


@contextlib.contextmanager
def relabelled(module, table: dict):
    """While inside, ``module`` (a pipeline's UNet) is called with `relabel_map`'s timestep
    instead of the one it is handed."""
    model_t, original = relabel_map(table), module.forward

    def forward(sample, timestep, *args, **kwargs):
        return original(sample, model_t(timestep), *args, **kwargs)

    with _replaced(module, "forward", forward):
        yield module


@contextlib.contextmanager
def _replaced(obj, name: str, value):
    """``obj.name = value`` on the instance while inside; then what the instance had."""
    own = obj.__dict__.get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if own is None:
            delattr(obj, name)
        else:
            setattr(obj, name, own)
