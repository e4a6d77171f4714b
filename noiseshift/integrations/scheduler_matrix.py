"""Is a diffusers scheduler on schedule? Every scheduler the adapter can read, times the
spacings, times the configurations that matter, at a few step counts, with a perfect model.

Each configuration runs twice through `audit_diffusers.run_scheduler`:

- on the mixture (the built-in one, or one fitted to the user's data), read by its exact
  meter: the mean |shift| with its CI and, across the step counts, its fitted order; the
  label error (the meter's reading of each state against its reading of true states at the
  level the model's timestep stands for); the residual noise (the reading of the final sample
  against true data);
- on a point mass (the probe): one mode with a negligible spread, in PROBE_DIM dimensions.
  There the exact model knows x0 and eps exactly, so every step of a correct scheduler
  (DDIM, DDPM, Euler, Heun, DPM-Solver, UniPC, PNDM, flow Euler, ancestral and SDE steps
  alike) lands exactly on the level it targets: no discretisation error exists for an order
  to explain. The level of a state x = a mu + s eps is read in closed form (`_probe_level`).

The flag (`flag_reason`), worst case over the step counts:

- first step: pure noise labelled below t = 1 - FIRST_TOL (a non-zero terminal SNR, or a
  spacing that starts below the top of the table);
- off its labels: on the probe, started from a true state at the first label, a state lands
  more than LABEL_TOL in t from the level its timestep stands for;
- residual noise: on the probe the final sample keeps a level above RESIDUAL_TOL.

The mixture's residual reading is reported, not flagged: a sampler's last step leaves a
discretisation error there too (flow Euler reads +0.014 at 10 steps, +0.004 at 30).

t is in the family's units (vp-cosine for diffusion schedulers, linear = sigma for flow).
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..analysis.audit import default_mixture
from ..analysis.shifts import mean_abs, order_fit, read_states, true_readings
from ..analysis.simulation import exact_meter
from ..analysis.statistics import N_BOOT, Estimate, bootstrap
from ..data import GaussianMixture
from ..errors import NoiseshiftError
from .audit_diffusers import _diffusers, _shape, build_scheduler, run_scheduler
from .levels import map_level
from .schedulers import SchedulerView

SPACINGS = ("leading", "linspace", "trailing")
# 15 does not divide 1000: DDIM's t - T // n stride misses the end there (diffusers #9261).
STEPS = (10, 15, 30)
FIRST_TOL = 0.02
LABEL_TOL = 0.01
RESIDUAL_TOL = 0.005
PROBE_DIM = 4096
PROBE_N = 64
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# The configurations that matter, as (tag, config); a variant runs only where the scheduler
# takes every key (and, for a default it already has, not at all).
VARIANTS = (("v", {"prediction_type": "v_prediction"}),
            ("x0", {"prediction_type": "sample"}),
            ("sd-betas", SD_BETAS),
            # Zero terminal SNR needs a v (or x0) model: eps at t = 1 carries no x0.
            ("zero-snr", {**SD_BETAS, "rescale_betas_zero_snr": True,
                          "prediction_type": "v_prediction"}),
            ("karras", {"use_karras_sigmas": True}),
            ("sigma-min", {"final_sigmas_type": "sigma_min"}),
            ("shift-3", {"shift": 3.0}))
# Classes the matrix cannot run as a sampler, with the reason.
SKIP = {"UnCLIPScheduler": "step needs prev_timestep from its pipeline",
        "DDIMInverseScheduler": "inverts data to noise; not a sampler",
        "DPMSolverMultistepInverseScheduler": "inverts data to noise; not a sampler"}

__all__ = ["ConfigResult", "MatrixResult", "SPACINGS", "STEPS", "VARIANTS", "audit_matrix",
           "check_configuration", "discover", "flag_reason", "point_mass"]


@dataclass
class StepCount:
    """One configuration at one number of steps."""

    steps: int
    mean_abs: Estimate        # mixture: mean over steps of |shift|
    label_error: Estimate     # mixture: the step with the largest |label error|
    label_t: float            # ... and the level its timestep stands for
    residual: Estimate        # mixture: final sample's reading minus true data's
    first_step: float         # 1 - the t the first (pure noise) state is labelled
    probe_error: float        # probe: largest |level - label| after the first state (signed)
    probe_t: float            # ... at this label
    probe_residual: float     # probe: the final sample's level

    def to_dict(self) -> dict:
        return {"steps": self.steps, "mean_abs_shift": self.mean_abs.to_dict(),
                "label_error": self.label_error.to_dict(), "label_t": self.label_t,
                "residual": self.residual.to_dict(), "first_step": self.first_step,
                "probe_error": self.probe_error, "probe_t": self.probe_t,
                "probe_residual": self.probe_residual}


@dataclass
class ConfigResult:
    """One scheduler configuration over the step counts."""

    scheduler: str
    spacing: str | None
    variant: str
    config: dict
    family: str
    runs: list[StepCount]
    order: float
    flag: str | None
    seconds: float

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.scheduler.removesuffix("Scheduler"), self.spacing,
                                    None if self.variant == "default" else self.variant) if p)

    def to_dict(self) -> dict:
        return {"scheduler": self.scheduler, "spacing": self.spacing, "variant": self.variant,
                "config": self.config, "family": self.family, "order": self.order,
                "flag": self.flag, "seconds": self.seconds,
                "runs": [r.to_dict() for r in self.runs]}


@dataclass
class MatrixResult:
    """The ranked matrix: configurations worst first, and the classes skipped, with why."""

    rows: list[ConfigResult]
    skipped: dict[str, str] = field(default_factory=dict)
    version: str = ""
    n: int = 0

    def to_dict(self) -> dict:
        return {"diffusers": self.version, "n": self.n, "skipped": self.skipped,
                "configurations": [r.to_dict() for r in self.rows]}


def point_mass(mixture: GaussianMixture, dim: int = PROBE_DIM) -> GaussianMixture:
    """The probe: one mode with the mixture's per-dimension energy and a spread of 1e-4.
    The mode is a fixed cosine, not a random draw, so that no seed's noise can repeat it."""
    energy = float(mixture.means.pow(2).mean() + mixture.stds.pow(2).mean())
    phase = torch.arange(dim, dtype=torch.float64) * (5 ** 0.5 - 1) / 2
    mu = torch.cos(2 * torch.pi * phase)
    return GaussianMixture((mu * (energy / float(mu.pow(2).mean())) ** 0.5)[None], 1e-4)


def _probe_level(x: torch.Tensor, mu: torch.Tensor, family: str) -> float:
    """The level t of states x = a mu + s eps (N, d), read in closed form: a by projection on
    mu, s from what is left (d - 1 dimensions of noise), pooled over the samples."""
    x = x.double()
    a = (x @ mu) / (mu @ mu)
    rest = x - a[:, None] * mu
    s2 = rest.pow(2).sum(1) / (x.shape[1] - 1)
    return map_level(max(float(a.mean()), 0.0), float(s2.mean().sqrt()), family)[0]


def _probe(name, spacing, config, steps, probe: GaussianMixture, seed):
    """Run from a true state at the first label (so the first-step error, measured apart,
    does not leak in): (largest level - label, its label, the final sample's level)."""
    sch = build_scheduler(name, spacing, config)
    sch.set_timesteps(steps)
    first = SchedulerView(sch).state(sch.timesteps[0])
    mu = probe.means[0]
    eps = torch.randn(PROBE_N, probe.dim, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    start = (first.a * mu + first.s * eps).float().reshape(PROBE_N, *_shape(probe.dim))
    trace: dict = {}
    _, states, family = run_scheduler(sch, probe, steps, PROBE_N, seed, trace=trace,
                                      latents=start)
    err = np.array([_probe_level(s, mu, family) for s in states]) - trace["labels"]
    i = int(np.abs(err).argmax())
    return (float(err[i]), float(trace["labels"][i]),
            _probe_level(trace["final"], mu, family))


def _mixture(name, spacing, config, steps, data, n, seed, meters, n_boot):
    trace: dict = {}
    ts, states, family = run_scheduler(build_scheduler(name, spacing, config), data.mixture,
                                       steps, n, seed, trace=trace)
    if family not in meters:
        meters[family] = exact_meter(data, family)
    meter = meters[family]
    read = read_states(meter, states)
    at_label = true_readings(meter, data, trace["labels"], n, seed)
    s = int(np.abs(read.mean(1) - at_label.mean(1)).argmax())
    final = read_states(meter, [trace["final"]])[0]
    clean = true_readings(meter, data, [0.0], n, seed)[0]
    kw = {"n_boot": n_boot, "seed": seed}
    return (family, trace["labels"],
            mean_abs(read, true_readings(meter, data, ts, n, seed), **kw),
            bootstrap(lambda i: read[s, i].mean() - at_label[s, i].mean(), n, **kw),
            float(trace["labels"][s]),
            bootstrap(lambda i: final[i].mean() - clean[i].mean(), n, **kw))


def flag_reason(runs: list[StepCount]) -> str | None:
    """The module docstring's rule, worst case over the step counts: one line, or None."""
    first = max(runs, key=lambda r: r.first_step)
    if first.first_step > FIRST_TOL:
        return (f"first step: pure noise labelled t={1 - first.first_step:.3f} at "
                f"{first.steps} steps (terminal SNR not zero, or the grid starts low)")
    off = max(runs, key=lambda r: abs(r.probe_error))
    if abs(off.probe_error) > LABEL_TOL:
        return (f"off its labels: a state labelled t={off.probe_t:.3f} is at "
                f"t={off.probe_t + off.probe_error:.3f} at {off.steps} steps, with an exact "
                f"model (no discretisation error)")
    rest = max(runs, key=lambda r: r.probe_residual)
    if rest.probe_residual > RESIDUAL_TOL:
        return (f"residual noise: the final sample stays at t={rest.probe_residual:.3f} at "
                f"{rest.steps} steps, with an exact model")
    return None


def check_configuration(name: str, spacing: str | None = None, config: dict | None = None, *,
                        variant: str = "default", data=None, steps=STEPS, n: int = 512,
                        seed: int = 0, meters: dict | None = None,
                        n_boot: int = N_BOOT) -> ConfigResult:
    """One configuration over the step counts: the numbers, the fitted order and the flag."""
    data = default_mixture() if data is None else data
    meters = {} if meters is None else meters
    probe, start, runs = point_mass(data.mixture), time.perf_counter(), []
    for k in steps:
        family, labels, ma, lab, lab_t, res = _mixture(name, spacing, config, k, data, n, seed,
                                                       meters, n_boot)
        runs.append(StepCount(k, ma, lab, lab_t, res, 1.0 - float(labels[0]),
                              *_probe(name, spacing, config, k, probe, seed)))
    order = order_fit([r.steps for r in runs], [r.mean_abs.value for r in runs])
    return ConfigResult(name, spacing, variant, dict(config or {}), family, runs, order,
                        flag_reason(runs), time.perf_counter() - start)


def discover(names=None) -> tuple[list[str], dict[str, str]]:
    """diffusers' scheduler classes the matrix can run (sorted) and the others with why: the
    adapter cannot read them (`SchedulerView`), their model output is EDM-preconditioned, or
    a five-step run on the probe fails (PNDM needs more than two)."""
    diffusers = _diffusers()
    pool = names or sorted(n for n in dir(diffusers) if n.endswith("Scheduler")
                           and not n.startswith("Flax") and isinstance(getattr(diffusers, n),
                                                                        type))
    keep, skipped = [], {}
    probe = point_mass(GaussianMixture(torch.zeros(1, 16), 1.0), 16)
    for name in pool:
        why = SKIP.get(name) or _why_not(diffusers, name, probe)
        if why:
            skipped[name] = why
        else:
            keep.append(name)
    return keep, skipped


def _why_not(diffusers, name, probe) -> str | None:
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type):
        raise NoiseshiftError(f"diffusers has no scheduler {name!r}")
    try:
        view = SchedulerView(build_scheduler(name))
        if view.parametrisation() is None:
            return "EDM-preconditioned model output (the perfect model gives eps, v or x0)"
        run_scheduler(build_scheduler(name), probe, 5, 2)
    except NoiseshiftError as e:
        return e.problem
    except Exception as e:  # noqa: BLE001 - any failure means: cannot run it here
        return f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
    return None


def variants(name: str) -> list[tuple[str, dict]]:
    """("default", {}) and every VARIANTS entry the scheduler takes and does not already
    have as its default."""
    params = inspect.signature(getattr(_diffusers(), name).__init__).parameters
    out = [("default", {})]
    for tag, cfg in VARIANTS:
        if all(k in params for k in cfg) and any(
                params[k].default != v for k, v in cfg.items()):
            out.append((tag, cfg))
    return out


def _spacings(name: str, spacings) -> list[str | None]:
    params = inspect.signature(getattr(_diffusers(), name).__init__).parameters
    return list(spacings) if "timestep_spacing" in params else [None]


def audit_matrix(data=None, *, schedulers=None, spacings=SPACINGS, steps=STEPS,
                 configs: str = "all", n: int = 512, seed: int = 0, n_boot: int = N_BOOT,
                 on_config=None) -> MatrixResult:
    """The matrix, ranked: flagged configurations first, then by mean |shift| at the most
    steps. configs: "default" (each scheduler as shipped) or "all" (with VARIANTS).
    on_config(done, total, result) is called after each configuration (a progress bar)."""
    if configs not in ("all", "default"):
        raise NoiseshiftError(f"configs must be 'all' or 'default', got {configs!r}")
    with _quiet(_diffusers()):
        names, skipped = discover(schedulers)
        plan = [(name, sp, tag, cfg) for name in names
                for tag, cfg in (variants(name) if configs == "all" else [("default", {})])
                for sp in _spacings(name, spacings)]
        meters: dict = {}
        rows = []
        for i, (name, sp, tag, cfg) in enumerate(plan):
            _check_one(rows, skipped, name, sp, tag, cfg, data=data, steps=steps, n=n,
                       seed=seed, meters=meters, n_boot=n_boot)
            if on_config is not None:
                on_config(i + 1, len(plan), rows[-1] if rows else None)
    rows.sort(key=lambda r: (r.flag is None, -r.runs[-1].mean_abs.value))
    return MatrixResult(rows, skipped, _diffusers().__version__, n)


def _check_one(rows, skipped, name, sp, tag, cfg, **kw) -> None:
    try:
        rows.append(check_configuration(name, sp, cfg, variant=tag, **kw))
    except Exception as e:  # noqa: BLE001 - a configuration diffusers itself refuses
        skipped[f"{name} {sp or ''} {tag}"] = f"{type(e).__name__}: {str(e)[:70]}"


@contextlib.contextmanager
def _quiet(diffusers):
    """The schedulers' own notes (a config they adjust, torchsde's float round-off at the
    interval's ends) would bury the table; the table says what matters."""
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        diffusers.utils.logging.set_verbosity(level)
