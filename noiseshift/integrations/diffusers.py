"""Record and guide diffusers pipelines (extra: ``pip install 'noiseshift[diffusers]'``).

    from noiseshift.integrations.diffusers import guide, record

    with record(pipe, "traj.h5"):                       # run "unguided"
        pipe(batch_size=16, generator=torch.Generator().manual_seed(0))
    with record(pipe, "traj.h5"), guide(pipe, estimator, 1.5):   # run "nag-estimator-step-1.5"
        pipe(batch_size=16, generator=torch.Generator().manual_seed(0))

Both hook ``pipe.scheduler.step`` on the instance (`stephook.StepHook`) and put it back on
exit. States are mapped onto ``vp-cosine`` (diffusion models) or ``linear`` (flow models) by
log-SNR (`levels.map_level`; docs/trajectory-format.md). This module imports diffusers only
to load a pipeline folder or swap a scheduler.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import torch

from ..errors import NoiseshiftError
from ..guidance import DEFAULT_DCW_FORM, DEFAULT_NAG_MODE
from ..io import TrajectoryWriter
from ..runspec import recorded_settings
from ..schedules import get_schedule
from . import require
from .guided import OutputGuidance
from .hub import hub_id, resolve
from .levels import to_schedule_form
from .schedulers import SchedulerView, jsonable
from .stephook import StepHook, pred_original_sample, prev_sample, with_prev_sample

# Pipelines that hand step() a batch of 2N with identical halves (CFG done in the batch).
DOUBLED_BATCH = ("DiTPipeline",)
# The schedulers DCW applies to: one model call per step, memoryless, the step's x0 at hand
# (returned, or FlowMatch's sample - sigma v, which DCW's own scheduler computes). Multistep
# (DPM++) keeps a history the corrected state would contradict; order-2 ones call twice.
DCW_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
                  "FlowMatchEulerDiscreteScheduler")


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


def describe_pipeline(pipe, data: dict | None = None) -> dict:
    """The model attr of a pipeline's run: pipeline class, its network's class and config,
    and the data spec when known (an argument, or the network's ``data_spec``)."""
    net = denoiser(pipe)
    out = {"name": type(pipe).__name__, "library": "diffusers"}
    path = getattr(getattr(pipe, "config", None) or {}, "get", lambda *_: None)("_name_or_path")
    if path:
        out["path"] = str(path)
        if Path(path).is_dir():
            out["folder_hash"] = folder_hash(path)
    hub = getattr(pipe, "hub_source", None)
    if hub:  # the same id at another snapshot is another model
        out["revision"] = hub["revision"]
    if net is not None:
        out["network"] = type(net).__name__
        out["config"] = jsonable(dict(getattr(net, "config", {}) or {}))
    data = data if data is not None else getattr(net, "data_spec", None)
    if data is not None:
        out["data"] = dict(data)
    return out


# Files up to this size are hashed whole (configs, small weights); larger ones by three
# chunks: retraining changes every chunk, and hashing gigabytes of weights per run would not
# be cheap.
WHOLE_BYTES, CHUNK_BYTES = 1 << 20, 1 << 16


def folder_hash(folder) -> str:
    """A cheap fingerprint of a pipeline folder: every file's relative name and size, the
    content of files up to 1 MiB, and the first, middle and last 64 KiB of larger ones (a
    safetensors header is at the start). Not mtimes: a copied folder is the same pipeline."""
    folder, h = Path(folder), hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # caches and lock files that diffusers or git may leave
        size = f.stat().st_size
        h.update(f"{rel.as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= WHOLE_BYTES:
                h.update(fh.read())
                continue
            for at in (0, size // 2, size - CHUNK_BYTES):
                fh.seek(at)
                h.update(fh.read(CHUNK_BYTES))
    return h.hexdigest()[:16]


# -- guide ----------------------------------------------------------------------------------

class Guide:
    """Estimator-based NAG (and eps scaling) applied to the model output inside step; DCW
    applied to the state step returns (`after_step`)."""

    def __init__(self, pipe, estimator, scale: float, *, mode: str, interval, eps_scale,
                 dcw: float = 0.0, dcw_form: str = DEFAULT_DCW_FORM):
        self.view = SchedulerView(pipe.scheduler)
        if dcw and self.view.name not in DCW_SCHEDULERS:
            raise NoiseshiftError(f"DCW does not apply to {self.view.name}: it needs a "
                                  f"one-call, memoryless step ({', '.join(DCW_SCHEDULERS)})")
        param = self.view.parametrisation()
        if param is None and (scale or eps_scale is not None):
            raise NoiseshiftError(f"cannot guide {self.view.name} (prediction_type "
                                  f"{self.view.prediction_type!r}): its model output is not eps, "
                                  f"v, x0 or a flow velocity")
        prediction, self.factor = param or ("eps", 1.0)
        self.editor = OutputGuidance(estimator, scale, schedule=self.view.family,
                                     prediction=prediction, mode=mode, interval=interval,
                                     eps_scale=eps_scale, shape=pipeline_shape(pipe),
                                     dcw=dcw, dcw_form=dcw_form)
        self.guidance = self.editor.guidance

    def apply(self, model_output: torch.Tensor, sample: torch.Tensor, state) -> torch.Tensor:
        if self.editor.passthrough:
            return model_output
        c = sample.shape[1] if sample.ndim > 1 else 0
        rest = None
        if c and model_output.shape[1] == 2 * c:  # learned variance: guide the mean half
            model_output, rest = model_output[:, :c], model_output[:, c:]
        out = model_output.double() * self.factor
        guided = self.editor(out, to_schedule_form(sample, state.k), state.t)
        if guided is not out:
            model_output = (guided.double() / self.factor).to(model_output.dtype)
        return model_output if rest is None else torch.cat([model_output, rest], dim=1)

    def after_step(self, result, model_output, sample, state):
        """``result`` with DCW applied to its prev_sample, in the scheduler's own state
        space, against the step's x0 (as DCW's FlowMatch scheduler does), at the state's
        noiseshift t; ``result`` itself without DCW."""
        hook = self.editor.step_hook
        if hook is None or not state.first_order:
            return result
        x_next = prev_sample(result)
        x0 = pred_original_sample(result, sample)
        if x0 is None:  # FlowMatch returns none
            x0 = sample.double() - state.s * model_output[:, :sample.shape[1]].double()
        x_next = hook({"i": state.index, "t": state.t, "t_next": None, "x": sample,
                       "x_next": x_next, "x0_pred": x0.to(x_next.dtype)})
        return with_prev_sample(result, x_next)


@contextlib.contextmanager
def guide(pipe, estimator, scale: float, *, mode: str = DEFAULT_NAG_MODE, interval=None,
          eps_scale=None, dcw: float = 0.0, dcw_form: str = DEFAULT_DCW_FORM):
    """Estimator-based NAG on any diffusers pipeline, inside the step hook.

    ``mode``: a `guidance.MODES` mode with no null-t branch: "estimator-step" (the default:
    a damped Newton step on the estimator's reading, along the predicted noise),
    "estimator-noise" (the gradient of log p(t|x) projected on the predicted noise),
    "estimator", "estimator-reading" or a cf control; ``interval``: (lo, hi) in noiseshift t
    (default: the mode's, in `guidance.MODES`);
    ``eps_scale``: epsilon scaling's lambda_t = b, or (b, k) for k t + b; ``dcw``,
    ``dcw_form``: DCW on the state each step returns (`guidance.DCW`; `DCW_SCHEDULERS`).
    ``scale=0`` (and no eps_scale, no DCW) leaves every step untouched, bit for bit.
    `record` entered around or inside it records the guided states under the guidance's run
    name.
    """
    g = Guide(pipe, estimator, scale, mode=mode, interval=interval, eps_scale=eps_scale,
              dcw=dcw, dcw_form=dcw_form)
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
                 labels=None, data=None, save_x0=True, overwrite=False, call=None,
                 attrs=None):
        if not isinstance(every, int) or every < 1:
            raise NoiseshiftError(f"every must be a positive integer, got {every!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise NoiseshiftError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.pipe, self.path, self.run = pipe, Path(path), run
        self.view = SchedulerView(pipe.scheduler)
        self.max_samples, self.every, self.seed = max_samples, every, seed
        self.labels, self.data, self.save_x0, self.overwrite = labels, data, save_x0, overwrite
        self.call, self.attrs = call, attrs
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
        elif 0 <= state.index <= self._index and state.first_order:
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
        n_all = n // 2 if doubled else n
        n = n_all if self.max_samples is None else min(n_all, self.max_samples)
        self._rows = slice(0, n)
        hook = StepHook.attach(self.pipe.scheduler)
        guidance = hook.guide.guidance if hook.guide is not None else {"kind": "none"}
        if self.attrs is not None and self.attrs.get("guidance", {}).get("kind") == \
                guidance.get("kind"):
            guidance = self.attrs["guidance"]  # the run's own: with its safety check
        if self.run is None:
            self.run = "unguided" if guidance.get("kind") == "none" else str(guidance["kind"])
        param = self.view.parametrisation()
        self._convert = None if param is None else (get_schedule(self.view.family), *param)
        steps = -(-self.view.planned_states() // self.every)
        self.writer = TrajectoryWriter(
            self.path, self.run, n=n, shape=tuple(sample.shape[1:]),
            schedule=self.view.family, guidance=guidance, seed=self.seed, labels=self.labels,
            save_x0=self.save_x0, overwrite=self.overwrite, steps=steps,
            **self._attrs(n_all))

    def _attrs(self, n_all: int) -> dict:
        """The run's sampler and model attributes: the given ones, else from the scheduler
        and the pipeline."""
        if self.attrs is not None:
            return {k: self.attrs[k] for k in ("sampler", "model")}
        sampler = self.view.describe()
        if self.call:
            sampler["call"] = dict(self.call)
        return {"sampler": recorded_settings(sampler, n_all, self.max_samples, self.every),
                "model": describe_pipeline(self.pipe, self.data)}

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
           save_x0: bool = True, overwrite: bool = False, call: dict | None = None,
           attrs: dict | None = None):
    """Record the first pipeline call made inside the block as run ``run`` of ``path``.

    Each recorded step holds the state handed to the scheduler (in the schedule's form: the VP
    state for diffusion models, latents for latent pipelines), the scheduler's x0 prediction
    and the nominal t; ``samples`` are the final latents (the last ``prev_sample``, before any
    VAE decoding or post-processing). ``run`` defaults to "unguided", or the guidance's name
    inside `guide`. ``max_samples`` records the first rows only and ``every`` every k-th
    state: the same subset for a guided run and its baseline. Later calls inside the block
    are not recorded; open one ``record`` per call to record several. ``seed``, ``labels`` and
    ``data`` (the data spec, e.g. ``{"name": "digits", "side": 16}``) go into the run's
    attributes; ``call`` (the pipeline call's settings, e.g. the prompt) goes into its
    ``sampler`` attribute, so that a baseline matches only runs made with the same.
    ``attrs`` (a `RunSpec`'s `attrs()`) gives the run's sampler and model attributes instead.
    """
    rec = Recorder(pipe, path, run, max_samples=max_samples, every=every, seed=seed,
                   labels=labels, data=data, save_x0=save_x0, overwrite=overwrite, call=call,
                   attrs=attrs)
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
        warnings.warn("record(): no scheduler step ran inside the block, so nothing was "
                      "recorded (was pipe.scheduler replaced after record() was entered?)",
                      stacklevel=3)
        return
    rec._finish()


# -- loading (for `noiseshift sample --model diffusers:DIR`) --------------------------------

# --scheduler names -> diffusers classes; True for flow-matching schedulers.
SCHEDULERS = {"ddpm": ("DDPMScheduler", False), "ddim": ("DDIMScheduler", False),
              "euler": ("EulerDiscreteScheduler", False),
              "dpm++": ("DPMSolverMultistepScheduler", False),
              "flow-euler": ("FlowMatchEulerDiscreteScheduler", True)}
SPACINGS = ("leading", "linspace", "trailing")
# Pipelines whose loop neither scales the initial noise (init_noise_sigma) nor calls
# scale_model_input: VE-form (k-style) schedulers would sample wrongly there.
UNSCALED_LOOPS = ("DDPMPipeline", "DDIMPipeline")


def load_pipeline(folder, *, scheduler: str | None = None, spacing: str | None = None,
                  device: str | None = None, progress: bool = True,
                  allow_download: bool = False):
    """A diffusers pipeline: a saved folder (``save_pretrained``), or a Hub id
    ``ORG/NAME[@REVISION]`` from the local Hugging Face cache (`hub.resolve`; downloaded only
    with ``allow_download``; a folder that exists wins), with its scheduler optionally
    replaced (`set_scheduler`). One-line NoiseshiftErrors for a missing extra, an id not in
    the cache, a folder that is not a pipeline, or one diffusers cannot load.
    ``progress=False`` hides diffusers' loading bar."""
    diffusers = require("diffusers")
    source = None if hub_id(folder) is None else resolve(folder, allow_download=allow_download)
    folder = Path(folder) if source is None else source.folder
    if not (folder / "model_index.json").is_file():
        raise NoiseshiftError("not a diffusers pipeline folder (no model_index.json; save one "
                              "with pipe.save_pretrained(DIR))", folder)
    _check_components(folder)
    # A folder's resolved path is the run's model path: the same folder, the same baseline.
    # An id loads by id, pinned to its snapshot, so the run's model path is the id.
    name, kw = (folder.resolve(), {"local_files_only": True}) if source is None else \
        (source.id, source.load_kwargs())
    bar = diffusers.utils.logging.is_progress_bar_enabled()
    if not progress:
        diffusers.utils.logging.disable_progress_bar()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(name, **kw, **quiet_load_kwargs())
    except Exception as e:  # diffusers raises many kinds for a damaged folder
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NoiseshiftError(f"diffusers cannot load this pipeline ({type(e).__name__}: "
                              f"{text[:200]})", folder) from e
    finally:
        if bar and not progress:
            diffusers.utils.logging.enable_progress_bar()
    if getattr(pipe, "scheduler", None) is None:
        raise NoiseshiftError("this pipeline has no scheduler to record", folder)
    pipe.hub_source = None if source is None else source.describe()
    set_scheduler(pipe, scheduler, spacing)
    SchedulerView(pipe.scheduler)  # unsupported schedulers fail here, before sampling
    if device is not None:
        pipe.to(device)
    return pipe


def quiet_load_kwargs() -> dict:
    """from_pretrained keywords: without accelerate, say so to diffusers rather than have it
    warn (five lines) on every load."""
    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}


def check_saved_class(config_file: Path, want: str, folder) -> None:
    """Refuse a saved component whose config.json names another class than `want` (diffusers
    would build `want` from it with random weights, or fail deep inside sampling)."""
    try:
        got = json.loads(Path(config_file).read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return  # missing or damaged: diffusers' own load says so in one line
    if got and got != want:
        raise NoiseshiftError(f"{Path(config_file).parent.name}/ holds a {got}, not the "
                              f"{want} expected here", folder)


def _check_components(folder: Path) -> None:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise NoiseshiftError(f"model_index.json is not readable JSON ({e})", folder) from None
    if not isinstance(index, dict):
        raise NoiseshiftError("model_index.json is not a JSON object", folder)
    for name, entry in index.items():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
            check_saved_class(folder / name / "config.json", entry[1], folder)


def set_scheduler(pipe, name: str | None = None, spacing: str | None = None):
    """Replace ``pipe.scheduler`` by the named one (``SCHEDULERS``) built from the same
    config, and/or set its ``timestep_spacing``; returns the pipeline."""
    if name is None and spacing is None:
        return pipe
    if name is not None and name not in SCHEDULERS:
        raise NoiseshiftError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    if spacing is not None and spacing not in SPACINGS:
        raise NoiseshiftError(f"unknown spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    diffusers = require("diffusers")
    current = pipe.scheduler
    cls = type(current) if name is None else getattr(diffusers, SCHEDULERS[name][0])
    if name is not None:
        flow = "FlowMatch" in type(current).__name__
        if SCHEDULERS[name][1] != flow:
            kind = "a flow-matching" if flow else "a diffusion (VP)"
            raise NoiseshiftError(f"--scheduler {name} does not fit {kind} model "
                                  f"({type(current).__name__})")
    extra = {} if spacing is None else {"timestep_spacing": spacing}
    new = cls.from_config(current.config, **extra)
    init = getattr(new, "init_noise_sigma", 1.0)
    if type(pipe).__name__ in UNSCALED_LOOPS and abs(float(init) - 1.0) > 1e-6:
        raise NoiseshiftError(f"{type(pipe).__name__} never calls scale_model_input nor scales "
                              f"its initial noise, so {cls.__name__} would sample wrongly in "
                              f"it; use --scheduler ddpm, ddim or dpm++")
    pipe.scheduler = new
    return pipe


__all__ = ["Guide", "Recorder", "SCHEDULERS", "SPACINGS", "describe_pipeline", "folder_hash",
           "guide", "load_pipeline", "pipeline_shape", "record", "set_scheduler"]
