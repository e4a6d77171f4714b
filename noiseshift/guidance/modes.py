"""The NAG modes, in one table: what each builds, needs and defaults to, and what its scale
means. `parse_mode` is the boundary check; `build_guidance`, the integrations' refusals, the
CLI's help and the docs read `MODES`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import NoiseshiftError
from .base import DEFAULT_CAP, FULL_INTERVAL, UNCAPPED_INTERVAL
from .classifier_free import ClassifierFreeGuidance
from .estimator import EstimatorGradientNAG, ReadingLikelihoodNAG, ReadingStepNAG
from .sampler_side import Relabel


@dataclass(frozen=True)
class ModeSpec:
    """One NAG mode.

    wrapper: the `Guided` class built, called with ``options`` (its fixed keywords); a
    `ClassifierFreeGuidance` mode shares that wrapper with CFG, so both run in one batched
    forward pass. needs_estimator: reads a noise-level estimator (the cf modes read t' off
    it). needs_null_t: runs the model's null-t branch (a model trained with --t-dropout).
    interval, cap: the defaults (cap None: uncapped). scale: what --nag-scale w means.
    on_output: the mode is an edit of the model's output at (x, t), so the diffusers and
    k-diffusion adapters can apply it to a pipeline's output (relabel calls the network at
    another t and cannot).
    """

    name: str
    wrapper: type
    needs_estimator: bool
    needs_null_t: bool
    interval: tuple[float, float]
    cap: float | None
    scale: str
    summary: str
    options: Mapping = field(default_factory=dict, hash=False)
    on_output: bool = True

    def __post_init__(self):
        # Read-only, so that no caller can change what a mode builds.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


_SCORE = "w in s + w (s(x|t) - s(branch at the read level)), in score space"
MODES: dict[str, ModeSpec] = {s.name: s for s in (
    ModeSpec("estimator-step", ReadingStepNAG, True, False, FULL_INTERVAL, None,
             "w/(1+w) of the Newton step: w=1 removes half the read excess, w=1.5 three "
             "fifths",
             "a damped Newton step on a noise-level estimator's reading of the state, along "
             "the predicted noise (any model)"),
    ModeSpec("estimator-noise", EstimatorGradientNAG, True, False, UNCAPPED_INTERVAL, None,
             "w times grad log p(t|x) along the predicted noise",
             "the part of the estimator's grad log p(t|x) along the predicted noise",
             {"project": True}),
    ModeSpec("estimator", EstimatorGradientNAG, True, False, UNCAPPED_INTERVAL, None,
             "w times grad log p(t|x)",
             "the estimator's whole grad log p(t|x) (edits content too)"),
    ModeSpec("estimator-reading", ReadingLikelihoodNAG, True, False, FULL_INTERVAL,
             DEFAULT_CAP, "w times the gradient of the reading's log-likelihood",
             "the gradient of a Gaussian likelihood of the estimator's reading (capped)"),
    ModeSpec("cf", ClassifierFreeGuidance, False, True, UNCAPPED_INTERVAL, None,
             "w in (w+1) v(x|t) - w v(x|null t)",
             "classifier-free, as published (needs a model trained with --t-dropout)"),
    ModeSpec("cf-read", ClassifierFreeGuidance, True, True, UNCAPPED_INTERVAL, None, _SCORE,
             "the null-t branch read at the estimator's t'"),
    ModeSpec("cf-read-control", ClassifierFreeGuidance, True, False, UNCAPPED_INTERVAL, None,
             _SCORE, "the conditional branch read at t' (a control: no null-t branch)",
             {"control": True}),
    ModeSpec("cf-calibrated", ClassifierFreeGuidance, True, True, FULL_INTERVAL, DEFAULT_CAP,
             _SCORE, "the null-t branch read at the calibrated reading (capped)",
             {"calibrated": True}),
    ModeSpec("cf-calibrated-control", ClassifierFreeGuidance, True, False, FULL_INTERVAL,
             DEFAULT_CAP, _SCORE, "the conditional branch read there (a control; capped)",
             {"calibrated": True, "control": True}),
    ModeSpec("relabel", Relabel, True, False, FULL_INTERVAL, None,
             "the share w of the way from t to the read level fed as the label (1: all)",
             "the network is handed the state's calibrated reading as its t (Time-Tuner's "
             "idea, read per sample), its x0 re-expressed at the scheduled t",
             on_output=False),
)}
NAG_MODES = tuple(MODES)
# The default: a damped Newton step on the learned estimator's reading, along the predicted
# noise, over the whole range (it needs no cap: its velocity change is finite at t = 1). On
# the default digits model (Euler-Maruyama, 16 steps, n = 1000) it was the only form that
# lowered FD: -18% and -12% (resolved) and -5% (not) on seeds 0 / 1 / 2 at scale 1.5, with
# the shift -21% by the independent meter, accuracy unchanged and recall -0.02. Guided over
# [0, 0.3] only, the FD gain was about the same and the shift cut half as large. Scale 1.5
# removes three fifths of the read excess per step. docs/results.md has the sweep
# (bench/bench_guidance.py --digits).
DEFAULT_NAG_MODE = "estimator-step"
DEFAULT_INTERVAL = MODES[DEFAULT_NAG_MODE].interval


def parse_mode(name: str) -> ModeSpec:
    """The mode's spec; one line listing the modes for an unknown name."""
    if name not in MODES:
        raise NoiseshiftError(f"unknown --nag-mode {name!r}; use one of {', '.join(MODES)}")
    return MODES[name]


def modes_help() -> str:
    """`--nag-mode`'s help: every mode, what it does, and the default."""
    rows = "; ".join(f"{m}: {s.summary}" for m, s in MODES.items())
    return f"Default {DEFAULT_NAG_MODE}. {rows}."


def scale_help() -> str:
    """`--nag-scale`'s help: what the scale w means in each mode."""
    rows = "; ".join(f"{', '.join(m for m, s in MODES.items() if s.scale == meaning)}: "
                     f"{meaning}" for meaning in dict.fromkeys(s.scale for s in MODES.values()))
    return f"Noise-level guidance (NAG) scale w; 0 = off. Per --nag-mode: {rows}."


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_NAG_MODE", "MODES", "NAG_MODES", "ModeSpec",
           "modes_help", "parse_mode", "scale_help"]
