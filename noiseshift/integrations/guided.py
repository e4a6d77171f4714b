"""noiseshift's guidance applied to a model output another library already computed.

diffusers and k-diffusion evaluate their own networks; noiseshift's guidance wrappers
(`noiseshift.guidance`: EstimatorGradientNAG, EpsScaling) wrap a denoiser. `OutputGuidance`
joins the two: a stand-in denoiser returns the output it is handed, the wrappers built by
`build_guidance` edit it, and every conversion goes through ``Schedule.convert``.
"""

from __future__ import annotations

import torch

from ..errors import NoiseshiftError
from ..guidance import (
    DEFAULT_DCW_FORM,
    DEFAULT_NAG_MODE,
    MODES,
    build_guidance,
    parse_mode,
    step_hook_of,
)
from ..schedules import get_schedule


def check_mode(mode: str, library: str, cli: bool = False) -> None:
    """One line if ``mode`` runs the model's null-t branch, which ``library``'s models lack;
    it lists the modes that need none, as options (``cli``) or as keyword arguments."""
    if not parse_mode(mode).on_output:
        raise NoiseshiftError(f"nag mode {mode!r} calls the network at another t, which an "
                              f"edit of {library}'s model output cannot; use it with the "
                              f"built-in samplers")
    if parse_mode(mode).needs_null_t:
        ok = [m for m, spec in MODES.items() if not spec.needs_null_t and spec.on_output]
        ok = "--nag-mode " + ", ".join(ok) if cli else "mode=" + ", ".join(map(repr, ok))
        raise NoiseshiftError(f"nag mode {mode!r} runs the model's null-t branch (a model "
                              f"trained with noise-condition dropout); {library} models have "
                              f"none: use {ok}")


class _Given(torch.nn.Module):
    """A denoiser that returns the output it was handed."""

    def __init__(self, schedule, prediction: str, shape=None):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.num_classes, self.supports_null_t = 0, False
        self.config = {} if shape is None else {"shape": list(shape)}
        self.out = None

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        return self.out


class OutputGuidance:
    """NAG in any mode that needs no null-t branch (`check_mode`; "estimator-step" is the
    default) and epsilon scaling on a model output in noiseshift's parametrisation
    ``prediction`` under ``schedule``.

    ``guidance`` is the run's guidance dict (its ``kind`` names the run); ``passthrough`` is
    True when nothing was asked for (scale 0, no eps scaling, no DCW), and then outputs are
    never touched. ``dcw``, ``dcw_form``: DCW (`guidance.DCW`), which leaves the output alone;
    ``step_hook`` is its correction of the next state (None without it).
    """

    def __init__(self, estimator, scale: float, *, schedule, prediction: str,
                 mode: str = DEFAULT_NAG_MODE, interval=None, eps_scale=None, shape=None,
                 library: str = "diffusers", dcw: float = 0.0,
                 dcw_form: str = DEFAULT_DCW_FORM):
        check_mode(mode, library)
        self.schedule = get_schedule(schedule)
        self.estimator, self.shape = estimator, None if shape is None else tuple(shape)
        if scale and estimator is not None:
            check_estimator(estimator, self.schedule, self.shape)
        self._given = _Given(self.schedule, prediction, self.shape)
        self.guided, self.guidance = build_guidance(
            self._given, nag_scale=float(scale), nag_mode=mode, eps_scale=eps_scale,
            interval=interval, estimator=estimator, dcw=dcw, dcw_form=dcw_form)
        self.passthrough = self.guided is self._given
        self.step_hook = step_hook_of(self.guided)

    def check_shape(self, shape) -> None:
        """Check the estimator against the states' shape once it is known."""
        if self.shape is None and self.estimator is not None:
            check_estimator(self.estimator, self.schedule, tuple(shape))
            self.shape = tuple(shape)

    def __call__(self, out: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        """The guided output (float64), or ``out`` itself when no row was guided."""
        if self.passthrough:
            return out
        self.check_shape(x.shape[1:])
        self._given.out = out
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        return self.guided(x, tt)


def check_estimator(estimator, schedule, shape) -> None:
    """One line if the estimator cannot read these states."""
    own = getattr(estimator, "schedule_", None)
    if own is not None and get_schedule(own) != schedule:
        raise NoiseshiftError(f"the estimator was trained for the {get_schedule(own).name} "
                              f"schedule; these states map onto {schedule.name} (train one "
                              f"with --schedule {schedule.name})")
    own_shape = getattr(estimator, "shape_", None)
    if shape is not None and own_shape is not None and tuple(own_shape) != tuple(shape):
        raise NoiseshiftError(f"the estimator reads states of shape {tuple(own_shape)}; these "
                              f"states have shape {tuple(shape)}")
    if not getattr(estimator, "has_posterior", True) and not hasattr(estimator,
                                                                     "grad_log_posterior"):
        raise NoiseshiftError(f"the {getattr(estimator, 'name', 'given')} estimator has no "
                              f"posterior over t to take a gradient of; use a learned one")


__all__ = ["OutputGuidance", "check_estimator", "check_mode"]
