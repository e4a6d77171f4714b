"""The one wrapper on a diffusers scheduler's ``step``, shared by `record` and `guide`.

``pipe.scheduler.step`` is the one call every pipeline makes, with the state the model saw,
the model output (already CFG-combined, stripped of learned-variance channels) and the
timestep. `StepHook` replaces ``step`` on the scheduler *instance* (the class is untouched),
reads the noise level before the original runs, lets the active guide edit the model output,
calls the original exactly once with every argument passed through, lets the guide correct
the next state it returned (DCW), shows the call to the active recorders and returns the
result. When the last user leaves it puts the scheduler back as it was, exceptions
included.
"""

from __future__ import annotations

import functools

from ..errors import NoiseshiftError
from .schedulers import SchedulerView, StepState

_ATTR = "_noiseshift_step_hook"
_MISSING = object()


class StepHook:
    """Wraps ``scheduler.step`` on the instance while guides or recorders are attached."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.view = SchedulerView(scheduler)
        self.guide = None
        self.recorders: list = []
        self._saved = scheduler.__dict__.get("step", _MISSING)
        self._original = original = scheduler.step

        # A function that carries the original's signature (inspect.signature follows
        # __wrapped__): pipelines pass eta and generator only if step's signature has them.
        @functools.wraps(original)
        def step(*args, **kwargs):
            return self.step(*args, **kwargs)

        scheduler.step = step
        setattr(scheduler, _ATTR, self)

    @classmethod
    def attach(cls, scheduler) -> StepHook:
        hook = scheduler.__dict__.get(_ATTR)
        return hook if hook is not None else cls(scheduler)

    def set_guide(self, guide) -> None:
        if self.guide is not None and guide is not None:
            raise NoiseshiftError("this pipeline is already inside a noiseshift guide(); "
                                  "nest record() in it, not a second guide()")
        self.guide = guide

    def release(self) -> None:
        """Put ``step`` back once no guide or recorder is attached."""
        if self.guide is not None or self.recorders:
            return
        sch = self.scheduler
        if self._saved is _MISSING:
            sch.__dict__.pop("step", None)
        else:
            sch.step = self._saved
        sch.__dict__.pop(_ATTR, None)

    def step(self, *args, **kwargs):
        active = [r for r in self.recorders if r.wants_steps]
        if self.guide is None and not active:
            return self._original(*args, **kwargs)
        args, kwargs = list(args), dict(kwargs)
        model_output, timestep, sample = (_arg(args, kwargs, i, name) for i, name in
                                          enumerate(("model_output", "timestep", "sample")))
        state: StepState = self.view.state(timestep)
        if self.guide is not None:
            model_output = self.guide.apply(model_output, sample, state)
            if len(args) > 0:
                args[0] = model_output
            else:
                kwargs["model_output"] = model_output
        result = self._original(*args, **kwargs)
        if self.guide is not None:
            result = self.guide.after_step(result, model_output, sample, state)
        last = self.view.is_last(timestep, state.index)
        for rec in active:
            rec.observe(state, model_output, sample, result, last)
        return result


def _arg(args: list, kwargs: dict, i: int, name: str):
    if len(args) > i:
        return args[i]
    if name in kwargs:
        return kwargs[name]
    raise NoiseshiftError(f"scheduler.step was called without {name}")


def prev_sample(result):
    """The next state from whatever step returned (an output object or a tuple)."""
    if hasattr(result, "prev_sample"):
        return result.prev_sample
    return result[0]


def with_prev_sample(result, x):
    """``result`` (an output object or a tuple) with its next state replaced by ``x``."""
    if hasattr(result, "prev_sample"):
        result.prev_sample = x
        return result
    return (x, *result[1:])


def pred_original_sample(result, like):
    """The scheduler's own x0 prediction (clamped when clip_sample is on), or None."""
    x0 = getattr(result, "pred_original_sample", None)
    if x0 is None and isinstance(result, tuple) and len(result) > 1:
        x0 = result[1]
    if x0 is None or not hasattr(x0, "shape") or tuple(x0.shape) != tuple(like.shape):
        return None
    return x0


__all__ = ["StepHook", "pred_original_sample", "prev_sample", "with_prev_sample"]
