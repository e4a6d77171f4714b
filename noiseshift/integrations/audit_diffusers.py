"""Audit a diffusers scheduler with a perfect model (`MixtureUNet`, the mixture's exact eps,
v, x0 or flow velocity for the scheduler's own alphas).

The loop is diffusers' standard one (init_noise_sigma, scale_model_input, step). Before each
``step`` the scheduler's noise level is read as the adapter reads it (`SchedulerView`): the
state ``x = a x0 + s eps`` maps onto vp-cosine (flow models: linear) by log-SNR, t and the
factor k, and the state k x is what the exact meter reads. Only first-order states of order-2
schedulers (Heun, KDPM2) are trajectory states. diffusers is imported here, lazily.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import torch

from ..analysis.audit import AuditResult, audit_states
from ..analysis.simulation import exact_meter
from ..analysis.statistics import N_BOOT
from ..errors import NoiseshiftError
from .diffusers import SPACINGS
from .levels import map_level, to_schedule_form
from .mixture_unet import MixtureUNet
from .schedulers import SUPPORTED, SchedulerView, jsonable

PIP = "pip install 'noiseshift[diffusers]'"

__all__ = ["audit_scheduler", "build_scheduler", "check_scheduler", "run_scheduler"]


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise NoiseshiftError(f"auditing a diffusers scheduler needs diffusers: {PIP}") from None
    return diffusers


def _config(config: dict | str | None) -> dict:
    """--scheduler-config as a dict: JSON text holding an object, or a dict."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as e:
            raise NoiseshiftError(f"--scheduler-config is not JSON: {e}") from None
    if config is not None and not isinstance(config, dict):
        raise NoiseshiftError(f"--scheduler-config must be a JSON object ({{\"key\": value}}), "
                              f"got {type(config).__name__}")
    return dict(config or {})


def build_scheduler(name: str, spacing: str | None = None, config: dict | str | None = None):
    """A diffusers scheduler by class name ('DDIMScheduler' or 'diffusers:DDIMScheduler'),
    with `timestep_spacing` = spacing and any other config keys. clip_sample is off unless
    the config turns it on (the mixture's data exceed [-1, 1]). Whatever diffusers refuses,
    and schedulers the audit cannot drive, are one-line NoiseshiftErrors."""
    diffusers = _diffusers()
    cls_name = name.split(":", 1)[1] if name.startswith("diffusers:") else name
    cls = getattr(diffusers, cls_name, None)
    if not isinstance(cls, type) or not cls_name.endswith("Scheduler"):
        raise NoiseshiftError(f"diffusers has no scheduler {cls_name!r} (e.g. DDIMScheduler, "
                              f"EulerDiscreteScheduler, DPMSolverMultistepScheduler, "
                              f"FlowMatchEulerDiscreteScheduler)")
    if spacing is not None and spacing not in SPACINGS:
        raise NoiseshiftError(f"unknown spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    kw = _config(config)
    params = inspect.signature(cls.__init__).parameters
    if "clip_sample" in params:
        kw.setdefault("clip_sample", False)
    if spacing is not None:
        kw["timestep_spacing"] = spacing
    unknown = sorted(set(kw) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise NoiseshiftError(f"{cls_name} takes no config key(s) {unknown}")
    try:
        scheduler = cls(**kw)
    except Exception as e:  # diffusers raises many kinds for a config it rejects
        raise NoiseshiftError(f"diffusers rejects this {cls_name} config ({type(e).__name__}: "
                              f"{_first_line(e)})") from None
    if getattr(scheduler, "config", None) is None or not hasattr(scheduler, "set_timesteps"):
        raise NoiseshiftError(f"{cls_name} is not a scheduler the audit can run; supported: "
                              f"{SUPPORTED}")
    return scheduler


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def check_scheduler(scheduler, steps: int) -> None:
    """Refuse, before sampling, a scheduler the exact model cannot serve or a table that
    would give NaN: no alphas_cumprod (and not flow matching), alphas_cumprod outside
    (0, 1] (betas < 0 or > 1), more steps than training timesteps (flow matching, with
    continuous time, excepted), or a set_timesteps that diffusers refuses."""
    name = type(scheduler).__name__
    n_train = scheduler.config.get("num_train_timesteps")
    if isinstance(n_train, int) and n_train < 1:
        raise NoiseshiftError(f"num_train_timesteps must be at least 1, got {n_train}")
    if steps < 1 or ("FlowMatch" not in name and isinstance(n_train, int) and steps > n_train):
        raise NoiseshiftError(f"--steps must be in 1..{n_train} (num_train_timesteps), got "
                              f"{steps}")
    ac = getattr(scheduler, "alphas_cumprod", None)
    if "FlowMatch" not in name:
        if ac is None:
            raise NoiseshiftError(f"{name} has no alphas_cumprod for the exact model to match; "
                                  f"supported: {SUPPORTED}")
        ac = torch.as_tensor(ac, dtype=torch.float64)
        if ac.numel() == 0 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise NoiseshiftError(f"{name}'s betas give alphas_cumprod outside (0, 1]: every "
                                  f"beta must lie in [0, 1)")
    try:
        scheduler.set_timesteps(steps)
    except Exception as e:  # diffusers' own refusals of a config at sampling time
        raise NoiseshiftError(f"diffusers cannot set {steps} steps on this {name} "
                              f"({type(e).__name__}: {_first_line(e)})") from None
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and not bool(torch.isfinite(torch.as_tensor(sigmas)).all()):
        raise NoiseshiftError(f"{name}'s sigmas at {steps} steps are not finite")
    SchedulerView(scheduler)


def run_scheduler(scheduler, mixture, steps: int, n: int, seed: int = 0, shape=None,
                  trace: dict | None = None, latents: torch.Tensor | None = None,
                  model_t=None):
    """The standard loop with the exact `MixtureUNet`: (t (S,), states (S, N, d) in the
    family's form, family name). Stochastic schedulers draw from a generator seeded by seed.
    A `trace` dict receives "labels" (S,), the t each state's timestep stands for as the
    model reads it, and "final", the last sample (N, d) as the pipeline returns it.
    `latents` (N, *shape), as a pipeline's, replace the initial noise. `model_t(t)`, when
    given, is the timestep the model is handed instead of the scheduler's t (a relabel)."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = tuple(shape or _shape(mixture.dim))
    unet = MixtureUNet.for_scheduler(mixture, scheduler, shape)
    view = SchedulerView(scheduler)
    gen = torch.Generator().manual_seed(seed)
    # Pipelines set the timesteps first: Euler's init_noise_sigma depends on them.
    scheduler.set_timesteps(steps)
    x = randn_tensor((n, *shape), generator=gen) * getattr(scheduler, "init_noise_sigma", 1.0)
    x = x if latents is None else latents
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    ts, labels, states = [], [], []
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t) if hasattr(scheduler,
                                                               "scale_model_input") else x
            out = unet(inp, t if model_t is None else model_t(t)).sample
            state = view.state(t)
            if state.first_order:
                ts.append(state.t)
                labels.append(map_level(*unet.level(float(t)), view.family)[0])
                states.append(to_schedule_form(x, state.k).reshape(n, -1).clone())
            x = scheduler.step(out, t, x, **({"generator": gen} if takes_gen else {})
                               ).prev_sample
    if trace is not None:
        trace.update(labels=np.array(labels), final=x.reshape(n, -1).float())
    return np.array(ts), torch.stack(states), view.family


def _shape(dim: int) -> tuple[int, int, int]:
    side = int(round(dim ** 0.5))
    return (1, side, side) if side * side == dim else (1, 1, dim)


def audit_scheduler(data, name: str, *, steps: int = 25, spacing: str | None = None,
                    config: dict | str | None = None, n: int = 512, seed: int = 0,
                    meters: dict | None = None, n_boot: int = N_BOOT) -> AuditResult:
    """The audit of a diffusers scheduler on mixture data (t in vp-cosine, flow: linear).
    `meters` caches the exact meter per family across calls."""
    scheduler = build_scheduler(name, spacing, config)
    check_scheduler(scheduler, steps)
    ts, states, family = run_scheduler(scheduler, data.mixture, steps, n, seed)
    meters = {} if meters is None else meters
    if family not in meters:
        meters[family] = exact_meter(data, family)
    desc = SchedulerView(scheduler).describe()
    label = (f"{desc['name'].removesuffix('Scheduler')}"
             f"{'-' + spacing if spacing else ''} {steps} steps")
    return audit_states(label, ts, states, meters[family], data, steps=steps,
                        sampler={**desc, "config": jsonable(desc["config"]), "family": family},
                        n_boot=n_boot, seed=seed)
