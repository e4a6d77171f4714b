"""A pipeline candidate's samples for `noiseshift tune --model diffusers:DIR`, drawn a block
of rows at a time (`PipelineModel.tune_draw`, the search's draw for a pipeline): each sample
from its own generator, seeded from (seed, i), so sample i is the same whichever candidate,
rung or block draws it; model evaluations counted on the network's forward; each state read
by the independent meter as the pipeline's own loop runs (a recorder of `StepHook`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..runtime import generator
from ..sampling import draw_labels, sample_seed
from ..schedules import get_schedule
from . import require
from .diffusers import denoiser, guide
from .levels import to_schedule_form
from .pipeline_runs import grid_timesteps, num_classes, pipeline_call
from .retime_diffusers import custom_grid
from .schedulers import SchedulerView
from .stephook import StepHook, prev_sample

__all__ = ["PipelineModel", "build", "using"]


@contextlib.contextmanager
def using(pipe, scheduler):
    """``pipe`` with ``scheduler`` in place of its own while inside."""
    own, pipe.scheduler = pipe.scheduler, scheduler
    try:
        yield pipe
    finally:
        pipe.scheduler = own


def build(base, c):
    """A fresh scheduler for the candidate ``c`` (a `tune_diffusers.PipelineCandidate`)
    from the loaded scheduler ``base``'s config."""
    cls = getattr(require("diffusers"), c.scheduler) if c.scheduler else type(base)
    return cls.from_config(base.config, **c.config)


class _Reader:
    """Watches ``step`` (a recorder of `stephook.StepHook`): the meter's reading of each
    state of the trajectory against its reference, the step times, and the last state."""

    wants_steps = True

    def __init__(self, meter, n: int):
        self.meter, self.n = meter, n
        self.reads, self.ts, self.last, self.seconds = [], [], None, 0.0

    def observe(self, state, model_output, sample, result, last: bool) -> None:
        self.last = prev_sample(result)[: self.n]  # DiT's doubled batch: the first half
        if self.meter is None or not state.first_order:
            return
        t0 = time.perf_counter()
        # the meter was fitted on the pipeline's device (`search.Context`)
        x = to_schedule_form(sample[: self.n].detach(), state.k)
        reading = self.meter.predict(x)[0].cpu().numpy()
        self.reads.append(reading - float(self.meter.reference(state.t)))
        self.ts.append(state.t)
        self.seconds += time.perf_counter() - t0


@contextlib.contextmanager
def _counting(net):
    """Counts the rows the network is called on (model evaluations, measured)."""
    rows = [0]

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        rows[0] += int(x.shape[0])

    handle = net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


@contextlib.contextmanager
def _reading(pipe, reader: _Reader):
    hook = StepHook.attach(pipe.scheduler)
    hook.recorders.append(reader)
    try:
        yield reader
    finally:
        hook.recorders.remove(reader)
        hook.release()


@dataclass
class PipelineModel:
    """A loaded pipeline as `tuning.tune`'s model: the family schedule its states map onto
    and `tune_draw`, the search's draw for it (`search.Context.drawer`)."""

    pipe: object
    supports_null_t = False
    config = MappingProxyType({})

    def __post_init__(self):
        self.base = self.pipe.scheduler
        self.schedule = get_schedule(SchedulerView(self.base).family)

    def tune_draw(self, d, ctx, seed: int, lo: int, hi: int) -> None:
        """Draw samples lo..hi of seed ``seed`` for ``d``'s candidate, a block of rows at a
        time, and keep their features and shift readings (as `tuning.draws.draw`)."""
        for start in range(lo, hi, ctx.block):
            idx = range(start, min(start + ctx.block, hi))
            x, reader, rows, seconds = self._call(d.candidate, d.steps, seed, idx, ctx)
            d.keep(seed, x, ctx, rows=rows, seconds=seconds - reader.seconds,
                   reads=reader.reads, ts=reader.ts)

    def _call(self, c, steps: int, seed: int, idx: range, ctx):
        """(the final states of samples ``idx``, the reader, model rows, seconds)."""
        pipe = self.pipe
        kw, _, _ = pipeline_call(pipe, n=len(idx), steps=steps, seed=seed)
        if "class_labels" in kw:  # sample i's label, whatever block draws it
            y = draw_labels(num_classes(pipe), ctx.n_total, seed)
            kw["class_labels"] = y[idx.start:idx.stop].tolist()
        kw["generator"] = [generator(sample_seed(seed, i)) for i in idx]
        reader = _Reader(ctx.meter, len(idx))
        with using(pipe, build(self.base, c)), contextlib.ExitStack() as stack:
            if c.timesteps is not None:
                grid_timesteps(pipe, c.timesteps)  # DDIM runs as its equal that takes one
                stack.enter_context(custom_grid(pipe.scheduler, timesteps=c.timesteps))
            if c.guidance:
                stack.enter_context(_guiding(pipe, c, ctx.estimator))
            stack.enter_context(_reading(pipe, reader))
            rows = stack.enter_context(_counting(denoiser(pipe)))
            t0 = time.perf_counter()
            with torch.no_grad():
                pipe(**kw)
            seconds = time.perf_counter() - t0
        return reader.last.detach().float().cpu(), reader, rows[0], seconds


def _guiding(pipe, c, estimator):
    g = dict(c.guidance)
    return guide(pipe, estimator if g.get("nag_scale") else None, g.pop("nag_scale", 0.0),
                 mode=g.pop("nag_mode", "estimator-step"), **g)


