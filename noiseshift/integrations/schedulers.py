"""What a diffusers scheduler holds at a call of ``step``, read by duck typing (no import).

`SchedulerView(scheduler)` tells, before the original ``step`` runs, the noise level (a, s)
of the ``sample`` it is handed, whether that call is a state of the trajectory (order-2
schedulers evaluate twice per step; only first-order calls are states), and which noiseshift
schedule family and parametrisation its model output maps onto. Kinds:

- ``table``: DDPM, DDIM, PNDM, LCM, ...: ``abar = alphas_cumprod[int(timestep)]``, VP form.
- ``sigma-vp``: DPM-Solver, UniPC, DEIS, SA-Solver: ``sigma = sigmas[step_index]`` and the
  scheduler's own ``_sigma_to_alpha_sigma_t`` (VP form, or flow form with flow sigmas).
- ``ve``: Euler and the other k-style schedulers: ``sigma = sigmas[step_index]``, x = x0 +
  sigma eps (KDPM2's second-order calls sit at ``sigmas_interpol``).
- ``flow``: FlowMatchEuler & co: ``sigma = sigmas[step_index]`` (shift included), x =
  (1 - sigma) x0 + sigma eps, model output v = eps - x0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import NoiseshiftError
from .levels import FLOW_FAMILY, V_TO_VELOCITY, VP_FAMILY, map_level, table_level

SUPPORTED = ("DDPM, DDIM, Euler and other k-style schedulers with sigmas, DPM-Solver "
             "multistep, FlowMatchEuler, or any scheduler with alphas_cumprod or sigmas")
# k-style schedulers: state in VE form, the model sees scale_model_input(x) = x / sqrt(1 + s^2).
K_STYLE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
           "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
           "DPMSolverSDEScheduler", "EDMEulerScheduler", "CMStochasticIterativeScheduler")
# Their model output is EDM-preconditioned, not eps/v/x0: recorded, but not guided.
PRECONDITIONED = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler",
                  "CMStochasticIterativeScheduler")
# diffusers prediction_type -> (noiseshift parametrisation, factor: noiseshift = factor * theirs)
PREDICTIONS = {"epsilon": ("eps", 1.0), "sample": ("x0", 1.0),
               "v_prediction": ("velocity", V_TO_VELOCITY), "flow_prediction": ("velocity", 1.0),
               "flow": ("velocity", 1.0)}


@dataclass
class StepState:
    """One call of ``step``: the level of its sample, mapped onto the run's family."""

    index: int          # position in scheduler.timesteps (step_index where there is one)
    a: float
    s: float
    t: float            # noiseshift t in the family
    k: float            # k * sample is the state in the family's form
    first_order: bool   # a state of the trajectory (False: an order-2 corrector call)


def _scalar(timestep) -> float:
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)


def _num(v) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def scheduler_kind(scheduler) -> str:
    """'flow', 'sigma-vp', 've' or 'table'; a NoiseshiftError for a scheduler noiseshift
    cannot map."""
    name = type(scheduler).__name__
    has_sigmas = getattr(scheduler, "sigmas", None) is not None
    if "FlowMatch" in name and has_sigmas:
        return "flow"
    if has_sigmas and hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        return "sigma-vp"
    if has_sigmas and hasattr(scheduler, "step_index") and (
            name in K_STYLE or _num(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6):
        return "ve"
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return "table"
    raise NoiseshiftError(f"cannot map {name}'s noise levels onto a noiseshift schedule; "
                          f"supported: {SUPPORTED}")


class SchedulerView:
    """Reads a diffusers scheduler's state at a ``step`` call (see the module docstring)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.name = type(scheduler).__name__
        self.kind = scheduler_kind(scheduler)
        config = getattr(scheduler, "config", {}) or {}
        flow = self.kind == "flow" or bool(config.get("use_flow_sigmas", False))
        self.family = FLOW_FAMILY if flow else VP_FAMILY
        self.prediction_type = "flow" if self.kind == "flow" else config.get(
            "prediction_type", "epsilon")

    # -- the model output's parametrisation ----------------------------------------------------
    def parametrisation(self) -> tuple[str, float] | None:
        """(noiseshift parametrisation, factor) of the model output in the family, or None
        when noiseshift cannot read it (EDM preconditioning, unknown prediction types)."""
        if self.name in PRECONDITIONED:
            return None
        p = PREDICTIONS.get(self.prediction_type)
        if p is None or (p[0] == "velocity" and (p[1] == 1.0) != (self.family == FLOW_FAMILY)):
            return None
        return p

    # -- the state at a call -------------------------------------------------------------------
    def first_order(self) -> bool:
        return bool(getattr(self.scheduler, "state_in_first_order", True))

    def step_index(self, timestep) -> int:
        sch = self.scheduler
        if hasattr(sch, "step_index"):
            if sch.step_index is None and hasattr(sch, "_init_step_index"):
                sch._init_step_index(timestep)  # what step() itself does first
            if sch.step_index is not None:
                return int(sch.step_index)
        ts = sch.timesteps
        hit = (ts.to(torch.float64) == _scalar(timestep)).nonzero()
        return int(hit[0, 0]) if hit.numel() else -1

    def level(self, timestep, index: int) -> tuple[float, float]:
        """(a, s) of the sample handed to step at this call."""
        sch = self.scheduler
        if self.kind == "table":
            return table_level(sch.alphas_cumprod, _scalar(timestep))
        sigmas = sch.sigmas
        if not self.first_order() and getattr(sch, "sigmas_interpol", None) is not None:
            sigmas = sch.sigmas_interpol  # KDPM2's midpoint
        sigma = sigmas[index]
        if self.kind == "flow":
            sigma = _num(sigma)
            return 1.0 - sigma, sigma
        if self.kind == "ve":
            return 1.0, _num(sigma)
        a, s = sch._sigma_to_alpha_sigma_t(torch.as_tensor(sigma, dtype=torch.float64))
        return _num(a), _num(s)

    def state(self, timestep) -> StepState:
        index = self.step_index(timestep)
        a, s = self.level(timestep, index)
        t, k = map_level(a, s, self.family)
        return StepState(index, a, s, t, k, self.first_order())

    def is_last(self, timestep, index: int) -> bool:
        """Whether the call just made was the pipeline's last (read after the original step)."""
        sch = self.scheduler
        n = len(sch.timesteps)
        if hasattr(sch, "step_index") and sch.step_index is not None:
            return int(sch.step_index) >= n
        return index == n - 1

    def planned_states(self) -> int:
        n = getattr(self.scheduler, "num_inference_steps", None)
        return int(n) if n else len(self.scheduler.timesteps)

    def describe(self) -> dict:
        """The sampler attr of a recorded run: class, config, steps, spacing."""
        config = dict(getattr(self.scheduler, "config", {}) or {})
        return {"name": self.name, "steps": self.planned_states(),
                "spacing": config.get("timestep_spacing"), "config": jsonable(config)}


def jsonable(obj):
    """A JSON-able copy: tuples to lists, tensors and numpy to lists, other objects to str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    return str(obj)


__all__ = ["K_STYLE", "PREDICTIONS", "SUPPORTED", "SchedulerView", "StepState", "jsonable",
           "scheduler_kind"]
