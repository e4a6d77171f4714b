"""Record and guide diffusers pipelines (extra: ``pip install 'noiseshift[diffusers]'``).

    from noiseshift.integrations.diffusers import guide, record

    with record(pipe, "traj.h5"):                       # run "unguided"
        pipe(batch_size=16, generator=torch.Generator().manual_seed(0))
    with record(pipe, "traj.h5"), guide(pipe, estimator, 1.5):   # run "nag-estimator-noise-1.5"
        pipe(batch_size=16, generator=torch.Generator().manual_seed(0))

Both hook ``pipe.scheduler.step`` on the instance (`stephook.StepHook`) and put it back on
exit. States are mapped onto ``vp-cosine`` (diffusion models) or ``linear`` (flow models) by
log-SNR (`levels.map_level`; docs/trajectory-format.md). This module imports diffusers only
to load a pipeline folder or swap a scheduler.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import NoiseshiftError
from ..guidance import NAG_MODES, build_guidance
from ..schedules import get_schedule
from ..trajectories import TrajectoryWriter
from . import require
from .levels import to_schedule_form
from .schedulers import SchedulerView, jsonable
from .stephook import StepHook, pred_original_sample, prev_sample

# Pipelines that hand step() a batch of 2N with identical halves (CFG done in the batch).
DOUBLED_BATCH = ("DiTPipeline",)
CF_MODES = tuple(m for m in NAG_MODES if m.startswith("cf"))
NO_NULL_T = ("--nag-mode {mode} is classifier-free NAG, which needs a null-t branch (a model "
             "trained with noise-condition dropout); diffusers models have none: use "
             "mode='estimator-noise' or 'estimator'")


# -- what is being sampled ------------------------------------------------------------------

def denoiser(pipe):
    """The pipeline's network: ``unet``, else ``transformer``, else None."""
    for name in ("unet", "transformer", "prior"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def pipeline_shape(pipe) -> tuple[int, ...] | None:
    """The shape of one state for UNet-style image pipelines, read from the network's config
    (None when it cannot be told before sampling, e.g. text-to-image latents, Flux packing)."""
    net = denoiser(pipe)
    cfg = getattr(net, "config", None)
    if cfg is None or type(pipe).__name__ not in ("DDPMPipeline", "DDIMPipeline", "DiTPipeline"):
        return None
    size, ch = cfg.get("sample_size"), cfg.get("in_channels")
    if size is None or ch is None:
        return None
    return (int(ch), *((int(size),) * 2 if isinstance(size, int) else tuple(size)))


def describe_model(pipe, data: dict | None = None) -> dict:
    """The model attr of a run: pipeline class, its network's class and config, and the data
    spec when known (an argument, or the network's ``data_spec``)."""
    net = denoiser(pipe)
    out = {"name": type(pipe).__name__, "library": "diffusers"}
    path = getattr(getattr(pipe, "config", None) or {}, "get", lambda *_: None)("_name_or_path")
    if path:
        out["path"] = str(path)
    if net is not None:
        out["network"] = type(net).__name__
        out["config"] = jsonable(dict(getattr(net, "config", {}) or {}))
    data = data if data is not None else getattr(net, "data_spec", None)
    if data is not None:
        out["data"] = dict(data)
    return out


# -- guide ----------------------------------------------------------------------------------

class _Output(torch.nn.Module):
    """A denoiser that returns the model output it is given: lets noiseshift's guidance
    wrappers edit an output diffusers already computed."""

    def __init__(self, schedule, prediction: str, shape=None):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.num_classes, self.supports_null_t = 0, False
        self.config = {} if shape is None else {"shape": list(shape)}
        self.out = None

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        return self.out


class Guide:
    """Estimator-based NAG (and eps scaling) applied to the model output inside step."""

    def __init__(self, pipe, estimator, scale: float, *, mode: str, interval, eps_scale):
        if mode in CF_MODES:
            raise NoiseshiftError(NO_NULL_T.format(mode=mode))
        self.view = SchedulerView(pipe.scheduler)
        param = self.view.parametrisation()
        if param is None and (scale or eps_scale is not None):
            raise NoiseshiftError(f"cannot guide {self.view.name} (prediction_type "
                                  f"{self.view.prediction_type!r}): its model output is not eps, "
                                  f"v, x0 or a flow velocity")
        self.prediction, self.factor = param or ("eps", 1.0)
        self.schedule = get_schedule(self.view.family)
        self.shape = pipeline_shape(pipe)
        self.estimator = estimator
        if scale and estimator is not None:
            check_estimator(estimator, self.schedule, self.shape)
        self.output = _Output(self.schedule, self.prediction, self.shape)
        self.guided, self.guidance = build_guidance(
            self.output, nag_scale=float(scale), nag_mode=mode, eps_scale=eps_scale,
            interval=interval, estimator=estimator)
        self.passthrough = self.guided is self.output
        self._checked = self.shape is not None

    def apply(self, model_output: torch.Tensor, sample: torch.Tensor, state) -> torch.Tensor:
        if self.passthrough:
            return model_output
        if not self._checked:
            if self.estimator is not None:
                check_estimator(self.estimator, self.schedule, tuple(sample.shape[1:]))
            self._checked = True
        x = to_schedule_form(sample, state.k)
        self.output.out = model_output.double() * self.factor
        t = torch.full((sample.shape[0],), state.t, dtype=torch.float64, device=sample.device)
        guided = self.guided(x, t)
        if guided is self.output.out:
            return model_output
        return (guided.double() / self.factor).to(model_output.dtype)


def check_estimator(estimator, schedule, shape) -> None:
    """One line if the estimator cannot read this pipeline's states."""
    own = getattr(estimator, "schedule_", None)
    if own is not None and get_schedule(own) != schedule:
        raise NoiseshiftError(f"the estimator was trained for the {get_schedule(own).name} "
                              f"schedule; this pipeline's states map onto {schedule.name} (train "
                              f"one with --schedule {schedule.name})")
    own_shape = getattr(estimator, "shape_", None)
    if shape is not None and own_shape is not None and tuple(own_shape) != tuple(shape):
        raise NoiseshiftError(f"the estimator reads states of shape {tuple(own_shape)}; this "
                              f"pipeline's states have shape {tuple(shape)}")
    if not getattr(estimator, "has_posterior", True) and not hasattr(estimator,
                                                                     "grad_log_posterior"):
        raise NoiseshiftError(f"the {getattr(estimator, 'name', 'given')} estimator has no "
                              f"posterior over t to take a gradient of; use a learned one")


@contextlib.contextmanager
def guide(pipe, estimator, scale: float, *, mode: str = "estimator-noise", interval=None,
          eps_scale=None):
    """Estimator-based NAG on any diffusers pipeline, inside the step hook.

    ``mode``: "estimator-noise" (the gradient of log p(t|x) projected on the predicted noise)
    or "estimator"; ``interval``: (lo, hi) in noiseshift t (default NAG's (0, 0.8));
    ``eps_scale``: epsilon scaling's lambda_t = b, or (b, k) for k t + b. ``scale=0`` (and
    no eps_scale) leaves every step untouched, bit for bit. `record` entered around or
    inside it records the guided states under the guidance's run name.
    """
    g = Guide(pipe, estimator, scale, mode=mode, interval=interval, eps_scale=eps_scale)
    hook = StepHook.attach(pipe.scheduler)
    try:
        hook.set_guide(g)
    except NoiseshiftError:
        hook.release()
        raise
    try:
        yield g
    finally:
        hook.guide = None
        hook.release()


# -- record ---------------------------------------------------------------------------------

class Recorder:
    """Writes the first pipeline call made inside `record` as one run of a trajectory file."""

    def __init__(self, pipe, path, run=None, *, max_samples=None, every=1, seed=None,
                 labels=None, data=None, save_x0=True, overwrite=False):
        if not isinstance(every, int) or every < 1:
            raise NoiseshiftError(f"every must be a positive integer, got {every!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise NoiseshiftError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.pipe, self.path, self.run = pipe, Path(path), run
        self.view = SchedulerView(pipe.scheduler)
        self.max_samples, self.every, self.seed = max_samples, every, seed
        self.labels, self.data, self.save_x0, self.overwrite = labels, data, save_x0, overwrite
        self.writer: TrajectoryWriter | None = None
        self.wants_steps, self.steps = True, 0
        self._count, self._index, self._last = 0, -1, None
        # The writer's own checks (folder, file, a run of that name), before any sampling.
        # Without a run name the name is known only at the first step (it follows the guide).
        TrajectoryWriter(self.path, run or "unguided", n=1, shape=(1,),
                         schedule=self.view.family, overwrite=overwrite or run is None)

    def observe(self, state, model_output, sample, result, last: bool) -> None:
        if self.writer is None:
            self._start(state, model_output, sample)
        elif state.index <= self._index and state.first_order:
            self._finish()  # a new pipeline call began: this run ended early (denoising_end)
            return
        self._index = state.index
        rows = self._rows
        if state.first_order:
            if self._count % self.every == 0:
                self._write(state, model_output, sample, result, rows)
            self._count += 1
        self._last = prev_sample(result)[rows]
        if last:
            self._finish()

    def _start(self, state, model_output, sample) -> None:
        n = sample.shape[0]
        doubled = (type(self.pipe).__name__ in DOUBLED_BATCH and n % 2 == 0
                   and torch.equal(sample[: n // 2], sample[n // 2:])
                   and torch.equal(model_output[: n // 2], model_output[n // 2:]))
        n = n // 2 if doubled else n
        n = n if self.max_samples is None else min(n, self.max_samples)
        self._rows = slice(0, n)
        hook = StepHook.attach(self.pipe.scheduler)
        guidance = hook.guide.guidance if hook.guide is not None else {"kind": "none"}
        if self.run is None:
            self.run = "unguided" if guidance.get("kind") == "none" else str(guidance["kind"])
        param = self.view.parametrisation()
        self._convert = None if param is None else (get_schedule(self.view.family), *param)
        sampler = {**self.view.describe(), "every": self.every, "max_samples": self.max_samples}
        steps = -(-self.view.planned_states() // self.every)
        self.writer = TrajectoryWriter(
            self.path, self.run, n=n, shape=tuple(sample.shape[1:]),
            schedule=self.view.family, sampler=sampler, guidance=guidance,
            model=describe_model(self.pipe, self.data), seed=self.seed, labels=self.labels,
            save_x0=self.save_x0, overwrite=self.overwrite, steps=steps)

    def _write(self, state, model_output, sample, result, rows) -> None:
        x = to_schedule_form(sample[rows].detach(), state.k)
        x0 = None
        if self.save_x0:
            x0 = pred_original_sample(result, sample)
            x0 = x0[rows] if x0 is not None else self._x0(state, model_output[rows], x)
        self.writer.callback({"i": self.steps, "t": state.t, "x": x.cpu(),
                              "x0_pred": None if x0 is None else x0.detach().float().cpu()})
        self.steps += 1

    def _x0(self, state, out, x):
        if self._convert is None:
            return None
        schedule, prediction, factor = self._convert
        t = torch.full((x.shape[0],), state.t, dtype=torch.float64)
        return schedule.to_x0_eps(out.double().cpu() * factor, prediction, x.double().cpu(), t)[0]

    def _finish(self) -> None:
        self.wants_steps = False
        if self.writer is not None and self._last is not None and not self.writer.complete:
            self.writer.finish(self._last.detach().float().cpu())
        self.close()

    def close(self) -> None:
        self.wants_steps = False
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def record(pipe, path, run: str | None = None, *, max_samples: int | None = None,
           every: int = 1, seed: int | None = None, labels=None, data: dict | None = None,
           save_x0: bool = True, overwrite: bool = False):
    """Record the first pipeline call made inside the block as run ``run`` of ``path``.

    Each recorded step holds the state handed to the scheduler (in the schedule's form: the VP
    state for diffusion models, latents for latent pipelines), the scheduler's x0 prediction
    and the nominal t; ``samples`` are the final latents (the last ``prev_sample``, before any
    VAE decoding or post-processing). ``run`` defaults to "unguided", or the guidance's name
    inside `guide`. ``max_samples`` records the first rows only and ``every`` every k-th
    state: the same subset for a guided run and its baseline. Later calls inside the block
    are not recorded; open one ``record`` per call to record several. ``seed``, ``labels`` and
    ``data`` (the data spec, e.g. ``{"name": "digits", "side": 16}``) go into the run's
    attributes.
    """
    rec = Recorder(pipe, path, run, max_samples=max_samples, every=every, seed=seed,
                   labels=labels, data=data, save_x0=save_x0, overwrite=overwrite)
    hook = StepHook.attach(pipe.scheduler)
    hook.recorders.append(rec)
    failed = False
    try:
        yield rec
    except BaseException:
        failed = True
        raise
    finally:
        hook.recorders.remove(rec)
        hook.release()
        if failed:
            rec.close()
        else:
            _finish_or_warn(rec)


def _finish_or_warn(rec: Recorder) -> None:
    if rec.writer is None:
        import warnings

        warnings.warn("record(): no scheduler step ran inside the block, so nothing was "
                      "recorded (was pipe.scheduler replaced after record() was entered?)",
                      stacklevel=3)
        return
    rec._finish()
