"""Guidance from CLI-style options: `build_guidance` composes the wrappers, `run_name` names
the run, `describe_estimator` records which estimator guided it."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import NoiseshiftError
from ..hooks import chain_hooks
from .base import FULL_INTERVAL, LOW_DIM, GuidanceWarning, Guided
from .classifier_free import ClassifierFreeGuidance
from .dcw import DCW, DEFAULT_DCW_FORM, check_form
from .modes import DEFAULT_NAG_MODE, MODES, ModeSpec, parse_mode
from .peers import EpsScaling, TimeShift
from .sampler_side import LangevinCorrector


def low_dim_warning(dim: int) -> str | None:
    """The warning for NAG on low-dimensional data, or None."""
    if dim > LOW_DIM:
        return None
    return (f"NAG on {dim}-dimensional data: p(t|x) is broad there and NAG tends to hurt (on "
            f"a 2-d mixture it raised the shift and collapsed samples onto the modes); "
            f"compare shift and sample quality with the unguided run")


def build_guidance(model, *, nag_scale: float = 0.0, nag_mode: str = DEFAULT_NAG_MODE,
                   cfg_scale: float = 0.0, eps_scale=None, time_shift=None, interval=None,
                   estimator=None, data=None, cap: float | None = None,
                   dcw: float = 0.0, dcw_form: str = DEFAULT_DCW_FORM, corrector=None):
    """A guided model from CLI-style options, and the JSON-able dict that describes it.

    nag_mode: a key of `modes.MODES` (the table says what each builds and needs).
    eps_scale: lambda_t's constant b, or (b, k) for lambda_t = k t + b.
    time_shift: (window, cutoff); E|x0|^2 comes from ``data``, else the model's config.
    interval: (lo, hi) for every guidance term; default NAG in the mode's interval, CFG and
    eps scaling everywhere.
    cap: the most the velocity moves per unit of score change (the linear schedule's
    t / (1 - t) is capped there); None: the mode's cap; math.inf: no cap.
    dcw, dcw_form: DCW's scale and form (`dcw.DCW`), a correction of the state after each
    sampler step (before the corrector's, when both are asked for).
    corrector: (snr, steps) or (snr, steps, tolerance): a Langevin corrector after each
    sampler step (`sampler_side.LangevinCorrector`; a tolerance reads ``estimator``).
    The dict has ``kind`` (the run name, "none" when unguided) and one entry per term. With
    nothing asked for, the model itself comes back. Warns (`GuidanceWarning`) for NAG on
    data of dimension <= 16.
    """
    spec = parse_mode(nag_mode)
    needs_est = bool(nag_scale) and spec.needs_estimator
    if needs_est and estimator is None:
        raise NoiseshiftError(f"--nag-mode {nag_mode} needs a noise-level estimator")
    guided = _peers(model, eps_scale, time_shift, interval, data)
    guided = _nag(guided, spec, nag_scale, cfg_scale, interval, estimator, cap)
    check_form(dcw_form)
    if dcw:
        guided = DCW(guided, dcw, dcw_form)
    if corrector is not None:
        c = [float(v) for v in corrector]
        guided = LangevinCorrector(guided, snr=c[0], steps=int(c[1]) if len(c) > 1 else 1,
                                   tolerance=c[2] if len(c) > 2 else None, estimator=estimator)
    desc = _describe(guided, model)
    if "nag" in desc:
        if needs_est:
            desc["nag"]["estimator"] = describe_estimator(estimator)
        dim = _dim(model, data)
        if dim is not None and low_dim_warning(dim):
            warnings.warn(low_dim_warning(dim), GuidanceWarning, stacklevel=2)
    desc = {"kind": run_name(desc) if desc else "none", **desc}
    return guided, desc


def _peers(model, eps_scale, time_shift, interval, data):
    """The time-shift and eps-scaling wrappers around ``model``, as asked for."""
    guided = model
    if time_shift is not None:
        window, cutoff = time_shift
        guided = TimeShift(guided, window=window, cutoff=cutoff,
                           data_m2=_data_m2(model, data))
    if eps_scale is not None:
        b, k = (*np.atleast_1d(np.asarray(eps_scale, dtype=float)), 0.0)[:2]
        guided = EpsScaling(guided, scale=b, slope=k, interval=interval)
    return guided


def _nag(guided, spec: ModeSpec, scale: float, cfg_scale: float, interval, estimator, cap):
    """The CFG and NAG wrappers around ``guided`` for one NAG mode: a classifier-free mode
    shares CFG's wrapper (one batched forward pass), any other wraps it."""
    nag_interval = spec.interval if interval is None else interval
    cap = spec.cap if cap is None else cap
    cf_nag = scale if spec.wrapper is ClassifierFreeGuidance else 0.0
    if cfg_scale or cf_nag:
        read = estimator if cf_nag and spec.needs_estimator else None
        guided = ClassifierFreeGuidance(
            guided, cfg_scale=cfg_scale, nag_scale=cf_nag, cfg_interval=interval,
            nag_interval=nag_interval, read=read, cap=cap if read is not None else None,
            **(spec.options if cf_nag else {}))
    if scale and not cf_nag:
        guided = spec.wrapper(guided, estimator, scale=scale, interval=nag_interval, cap=cap,
                              **spec.options)
    return guided


def _describe(guided, model) -> dict:
    """Every wrapper's entries between ``guided`` and ``model``, innermost first."""
    chain = []
    while guided is not model:
        chain.append(guided)
        guided = guided.model
    desc = {}
    for wrapper in reversed(chain):
        desc.update(wrapper.describe())
    return desc


def step_hook_of(model):
    """The sampler's ``step_hook`` for a guided model: every wrapper's ``after_step`` in its
    chain, innermost first; None when none has one. Pass it as
    ``sampling.sample(model, ..., step_hook=step_hook_of(model))``."""
    hooks = []
    while isinstance(model, Guided):
        if hasattr(model, "after_step"):
            hooks.insert(0, model.after_step)
        model = model.model
    return chain_hooks(hooks)


def _data_m2(model, data) -> float:
    if data is not None:
        return data.second_moment()
    cfg = getattr(model, "config", None) or {}
    if "data_m2" in cfg:
        return float(cfg["data_m2"])
    if getattr(model, "mixture", None) is not None:
        return model.mixture.second_moment()
    raise NoiseshiftError("--time-shift needs the data's second moment: pass the data")


def _dim(model, data) -> int | None:
    if data is not None:
        return int(data.dim)
    shape = (getattr(model, "config", None) or {}).get("shape")
    if shape is not None:
        return int(np.prod(shape))
    mixture = getattr(model, "mixture", None)
    return None if mixture is None else int(mixture.dim)


def describe_estimator(estimator) -> dict:
    """What identifies an estimator in a run's guidance attr."""
    out = {"kind": type(estimator).__name__}
    to_dict = getattr(estimator, "to_dict", None)
    if callable(to_dict):
        out.update(to_dict())
    path = getattr(estimator, "path", None)
    if path is not None:
        out["path"] = str(path)
    return out


def _num(v: float) -> str:
    return f"{float(v):g}"


def run_name(guidance: dict) -> str:
    """A run name from a guidance dict: 'unguided', 'nag-estimator-1.5', 'cfg-2+nag-cf-1',
    'eps-scale-1.004', 'time-shift-0.1-0.2', 'dcw-0.01', 'dcw-0.01-pixel'; a non-default
    interval adds '@lo-hi'."""
    parts: list[str] = []
    for key in ("cfg", "nag", "eps_scale"):
        g = guidance.get(key)
        if not g:
            continue
        default = MODES[g["mode"]].interval if key == "nag" else FULL_INTERVAL
        if key == "cfg":
            name = f"cfg-{_num(g['scale'])}"
        elif key == "nag":
            name = f"nag-{g['mode']}-{_num(g['scale'])}"
        else:
            name = f"eps-scale-{_num(g['scale'])}"
            if g.get("slope"):
                name += f"-slope-{_num(g['slope'])}"
        if tuple(g.get("interval", default)) != tuple(default):
            lo, hi = g["interval"]
            name += f"@{_num(lo)}-{_num(hi)}"
        parts.append(name)
    if guidance.get("corrector"):
        c = guidance["corrector"]
        tol = "" if c.get("tolerance") is None else f"-tol-{_num(c['tolerance'])}"
        parts.append(f"corrector-{_num(c['snr'])}x{c['steps']}{tol}")
    if guidance.get("time_shift"):
        ts = guidance["time_shift"]
        parts.append(f"time-shift-{_num(ts['window'])}-{_num(ts['cutoff'])}")
    if guidance.get("dcw"):
        g = guidance["dcw"]
        parts.append(f"dcw-{_num(g['scale'])}" + ("" if g["form"] == DEFAULT_DCW_FORM
                                                  else f"-{g['form']}"))
    return "+".join(parts) or "unguided"
