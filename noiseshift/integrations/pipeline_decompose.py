"""`noiseshift decompose` for runs recorded from a diffusers pipeline
(`noiseshift sample --model diffusers:DIR`): the shift split into the scheduler's part and
the network's part, as `analysis.decompose` splits a built-in run's.

A pipeline run's attributes say how to make it again: the pipeline folder (``model.path``,
resolved) and a fingerprint of its files (``model.folder_hash``, `diffusers.folder_hash`),
the scheduler's class and config (``sampler.name``, ``sampler.config``), steps, seed, the
call's settings (``sampler.call``), labels and the recorded subset. The pipeline is loaded
from that folder (local files only), its scheduler rebuilt from the recorded config, and the
run drawn again through `diffusers.record` into a scratch file; its states must equal the
file's (bit for bit on the CPU in our tests; the tolerance is the built-in decompose's).
Then the same pipeline runs at k times the steps with a generator of the same seed: the
pipelines draw their initial latents first, so the fine run starts from the run's latents.

- Deterministic schedulers (`ORDERS`, stochastic False): the fine run solves the same ODE
  from the same latents, so the two runs pair sample by sample.
- Stochastic ones (DDPM, ancestral, SDE variants): the scheduler draws its per-step noise
  from the generator, as many draws as steps, so the fine run's noise path is not the run's
  (diffusers gives no hook to bridge it). Rows still share the initial latents and the
  bootstrap resamples rows, so the CIs hold whatever correlation is left; they are those of
  a comparison by distribution at each step, and say so (`Decomposition.pairing`).

The fine run is read at its step nearest in t to each recorded step, not interpolated (an
interpolated state lies on no sampler's path); its reading is moved by the t difference (a
calibrated reading follows t one for one) and the largest difference is reported as
``t_gap`` (0 where the fine grid holds the coarse one: trailing spacing with k dividing
num_train_timesteps / steps).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..analysis.decompose import PAIRED, Decomposition, split_parts
from ..analysis.shifts import read_states, true_readings
from ..analysis.statistics import N_BOOT
from ..errors import NoiseshiftError
from ..estimation import check_compatible
from ..io import open_trajectories
from . import require
from .diffusers import folder_hash, load_pipeline, record
from .pipeline_runs import num_classes, pipeline_call

# The order p of each scheduler the fine run can refine, and whether it draws noise per step.
# An int, or "solver_order": the scheduler's own config says (a multistep solver of order p
# has global error O(h^p)). Schedulers not listed are refused: no order, no extrapolation.
ORDERS = {
    # eta = 0 in every pipeline call: the first-order exponential integrator of the ODE.
    "DDIMScheduler": (1, False),
    # Ancestral sampling is Euler-Maruyama-like on the reverse SDE: weak order 1.
    "DDPMScheduler": (1, True),
    # Euler on the ODE in sigma (s_churn = 0 in pipeline calls).
    "EulerDiscreteScheduler": (1, False),
    # An Euler step followed by fresh noise: weak order 1.
    "EulerAncestralDiscreteScheduler": (1, True),
    # Heun's predictor-corrector and DPM-Solver-2's midpoint step: second order.
    "HeunDiscreteScheduler": (2, False),
    "KDPM2DiscreteScheduler": (2, False),
    # Euler on the flow ODE in sigma.
    "FlowMatchEulerDiscreteScheduler": (1, False),
    # Multistep / singlestep solvers: solver_order (UniPC's corrector could add one; the
    # lower p is kept, as lower_order_final runs the last steps at lower order anyway).
    "DPMSolverMultistepScheduler": ("solver_order", False),
    "DPMSolverSinglestepScheduler": ("solver_order", False),
    "UniPCMultistepScheduler": ("solver_order", False),
    "DEISMultistepScheduler": ("solver_order", False),
}
UNPAIRED = ("by distribution at each step: same initial latents, but the scheduler's own "
            "per-step noise differs between the runs")

__all__ = ["ORDERS", "decompose_pipeline_run", "pipeline_folder", "scheduler_order"]


def scheduler_order(name: str, config: dict) -> tuple[int, bool]:
    """(order p, stochastic) of scheduler class ``name`` with ``config`` (`ORDERS`)."""
    if name not in ORDERS:
        raise NoiseshiftError(f"decompose cannot refine {name}: its order is not known "
                              f"(refinable: {', '.join(ORDERS)})")
    order, stochastic = ORDERS[name]
    algorithm = str(config.get("algorithm_type", ""))
    if algorithm.startswith("sde"):
        return 1, True  # the SDE variants' noise term caps them at weak order 1
    if order == "solver_order":
        order = int(config.get("solver_order", 2))
    return int(order), stochastic


def pipeline_folder(run, folder=None) -> Path:
    """The folder that made ``run``, checked against the run's fingerprint: the recorded
    path, or ``folder`` (a moved copy). One line when it is gone or has changed."""
    info = run.attrs.get("model") or {}
    recorded = info.get("path")
    path = Path(folder) if folder is not None else Path(recorded) if recorded else None
    if path is None:
        raise NoiseshiftError("the run does not say which pipeline folder made it; pass "
                              "--model diffusers:DIR", run.path)
    if not path.is_dir():
        raise NoiseshiftError(f"the run's pipeline folder {path} is not here (moved?); pass "
                              f"--model diffusers:DIR", run.path)
    want = info.get("folder_hash")
    if want is None:
        raise NoiseshiftError("the run records no fingerprint of its pipeline folder (recorded "
                              "before decompose supported pipelines); record it again",
                              run.path)
    if folder_hash(path) != want:
        raise NoiseshiftError(f"the pipeline folder {path} has changed since the run was "
                              f"recorded (its files differ from the run's fingerprint)",
                              run.path)
    return path.resolve()


def _settings(run) -> tuple[dict, int]:
    """The run's sampler settings and seed, refused in one line when it cannot be re-made."""
    settings, seed = run.attrs.get("sampler") or {}, run.attrs.get("seed")
    if seed is None:
        raise NoiseshiftError("the run has no seed: it cannot be drawn again", run.path)
    if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
        raise NoiseshiftError("the run's sampler settings hold no scheduler config to "
                              "rebuild it from", run.path)
    if (run.attrs.get("guidance") or {}).get("kind", "none") != "none":
        raise NoiseshiftError("decompose re-runs the pipeline alone: pick an unguided run",
                              run.path)
    return settings, int(seed)


def _call_kw(pipe, run, settings: dict, seed: int) -> tuple[dict, int, int]:
    """(the pipeline call's keywords, samples drawn, every how many steps it recorded)."""
    rec = settings.get("recorded") or {}
    n, every = int(rec.get("n", run.n)), int(rec.get("every", 1))
    call = settings.get("call") or {}
    cfg = float(call["guidance_scale"]) - 1.0 if "guidance_scale" in call else 0.0
    labels = None if run.labels is None else np.asarray(run.labels)
    fixed = None
    if labels is not None and num_classes(pipe) and len(set(labels.tolist())) == 1:
        fixed = int(labels[0])  # `--class c` draws no labels; the seed's draw would differ
    kw, drawn, _ = pipeline_call(pipe, n=n, steps=int(settings["steps"]), seed=seed,
                                 class_label=fixed, prompt=call.get("prompt"), cfg_scale=cfg)
    if labels is not None and (drawn is None or
                               not np.array_equal(drawn.numpy()[:len(labels)], labels)):
        raise NoiseshiftError("the run's labels are not the ones its seed draws", run.path)
    return kw, n, every


def _draw(pipe, settings: dict, kw: dict, steps: int, seed: int, subset: tuple[int, int],
          scratch: Path) -> None:
    """Record the pipeline run at ``steps`` steps with a fresh scheduler built from the
    recorded config, as the run was recorded (the first ``subset[0]`` samples, every
    ``subset[1]``-th step), into run "run" of ``scratch``."""
    diffusers = require("diffusers")
    pipe.scheduler = getattr(diffusers, settings["name"]).from_config(settings["config"])
    with record(pipe, scratch, "run", max_samples=subset[0], every=subset[1], seed=seed,
                save_x0=False, overwrite=True), torch.no_grad():
        pipe(**{**kw, "num_inference_steps": steps},
             generator=torch.Generator(device=pipe.device.type).manual_seed(seed))


def _nearest(t_fine: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.abs(t_fine[None, :] - t[:, None]).argmin(axis=1)


def _check_refinable(settings: dict, steps: int, k: int, run) -> None:
    limit = settings["config"].get("num_train_timesteps")
    if limit and k * steps > int(limit):
        raise NoiseshiftError(f"k x steps = {k * steps} is more than the scheduler's "
                              f"{limit} training timesteps; use a smaller --k", run.path)


def _regenerated(pipe, run, settings, kw, seed, subset, scratch) -> tuple[np.ndarray, float]:
    """The run drawn again: (its states, max |regenerated - recorded|)."""
    _draw(pipe, settings, kw, int(settings["steps"]), seed, subset, scratch / "coarse.h5")
    with open_trajectories(scratch / "coarse.h5") as f:
        again = f.run("run")
        t, coarse = np.asarray(again.t, dtype=np.float64), np.asarray(again.states[:])
    if coarse.shape != tuple(run.states.shape) or not np.allclose(t, run.t, atol=1e-6):
        raise NoiseshiftError(f"re-drawing run {run.name!r} gives {len(t)} steps of shape "
                              f"{coarse.shape[1:]}, not the file's: another pipeline?", run.path)
    diff = float(np.abs(coarse.astype(np.float64) - np.asarray(run.states[:])).max())
    return coarse, diff


def decompose_pipeline_run(run, meter, data, *, folder=None, k: int = 8,
                           n_boot: int = N_BOOT, seed: int = 0,
                           tolerance: float = 1e-5) -> Decomposition:
    """Decompose pipeline run ``run`` (an `io.Run`) read by ``meter`` (an estimator for its
    schedule and shape) against true states of ``data``; ``folder`` replaces the recorded
    pipeline folder (a moved copy, checked by its fingerprint)."""
    settings, run_seed = _settings(run)
    check_compatible(meter, run)
    order, stochastic = scheduler_order(settings.get("name", "?"), settings["config"])
    _check_refinable(settings, int(settings["steps"]), k, run)
    pipe = load_pipeline(pipeline_folder(run, folder), device="cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    kw, _, every = _call_kw(pipe, run, settings, run_seed)
    with tempfile.TemporaryDirectory(prefix="noiseshift-decompose-") as tmp:
        coarse, diff = _regenerated(pipe, run, settings, kw, run_seed, (run.n, every),
                                    Path(tmp))
        if diff > tolerance:
            raise NoiseshiftError(f"re-drawing run {run.name!r} gives other states (max |diff| "
                                  f"{diff:.3g}): another device, thread count or diffusers?",
                                  run.path)
        _draw(pipe, settings, kw, k * int(settings["steps"]), run_seed, (run.n, 1),
              Path(tmp) / "fine.h5")
        ts = np.asarray(run.t, dtype=np.float64)
        with open_trajectories(Path(tmp) / "fine.h5") as f:
            fine = f.run("run")
            t_fine = np.asarray(fine.t, dtype=np.float64)
            idx = _nearest(t_fine, ts)
            gap = ts - t_fine[idx]  # only the steps nearest the run's are read
            rf = read_states(meter, (fine.states[int(i)] for i in idx)) + gap[:, None]
    label = f"{run.name}: {settings['name']} {settings['steps']} steps, fine x{k}"
    return split_parts(label, k, ts, read_states(meter, coarse), rf,
                       true_readings(meter, data, ts, run.n, seed), order, diff,
                       n_boot=n_boot, seed=seed, pairing=UNPAIRED if stochastic else PAIRED,
                       t_gap=float(np.abs(gap).max()))
