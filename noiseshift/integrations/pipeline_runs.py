"""Sample a diffusers pipeline and record it beside its matching unguided baseline.

What `noiseshift sample --model diffusers:DIR` does, as a library call:

    from noiseshift.integrations.pipeline_runs import sample_pipeline
    pipe = load_pipeline("ddpm-digits/", scheduler="ddim")
    out = sample_pipeline(pipe, "traj.h5", n=64, steps=20, seed=0, estimator=est,
                          nag_scale=1.5)
    out.run, out.baseline          # "nag-estimator-step-1.5", "unguided"

A guided run says something only beside an unguided run of the same pipeline, scheduler,
steps, seed, recorded subset, labels and call settings (prompt, guidance scale): the same
noise, so the samples pair up. The run is a `RunSpec` (`pipeline_spec`) and
`PipelineBackend` draws it, so the baseline is found or recorded by the one orchestration
built-in models use (`recording.record_with_baseline`).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.safety import guarded
from ..defaults import DEFAULT_SAMPLER
from ..errors import NoiseshiftError
from ..guidance import DEFAULT_DCW_FORM, DEFAULT_NAG_MODE
from ..pretrained import get_estimator, independent_meter
from ..recording import Recorded, record_with_baseline
from ..runspec import UNGUIDED, RunSpec
from ..runtime import resolve_device
from ..sampling import draw_labels
from .diffusers import (
    Guide,
    denoiser,
    describe_pipeline,
    guide,
    load_pipeline,
    pipeline_shape,
    record,
)
from .guided import check_mode
from .retime_diffusers import DDIM_AS, custom_grid, pick_grid, relabelled
from .schedulers import SchedulerView


@dataclass
class PipelineRun:
    """What `sample_pipeline` did: the final states (latents for latent pipelines) of run
    ``run``, the decoded images in [-1, 1] as (N, C, H, W) (None when the pipeline returned
    none), the labels, its ``baseline`` (None for an unguided run), the guidance dict,
    whether a run was replaced, and the seconds the run took (baseline not included)."""

    samples: torch.Tensor | None
    images: torch.Tensor | None
    labels: torch.Tensor | None
    run: str | None
    baseline: str | None
    guidance: dict
    overwrote: bool
    seconds: float


# -- the pipeline call ------------------------------------------------------------------------

def num_classes(pipe) -> int:
    """How many classes a class-conditional pipeline takes (0 for none)."""
    if "class_labels" not in _params(pipe):
        return 0
    cfg = getattr(denoiser(pipe), "config", {}) or {}
    for key in ("num_embeds_ada_norm", "num_class_embeds", "num_classes"):
        if cfg.get(key):
            return int(cfg[key])
    return 0


def _params(pipe) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def pipeline_call(pipe, *, n: int, steps: int, seed: int, class_label=None, prompt=None,
                  cfg_scale: float = 0.0) -> tuple[dict, torch.Tensor | None, dict]:
    """(keyword arguments for ``pipe(...)`` without the generator, the labels, the call's
    settings to record). Class-conditional pipelines (DiT) get ``class_labels`` (``class_label``
    for all, else drawn from the seed as for built-in models); text-to-image pipelines need
    ``prompt``; ``cfg_scale`` w sets the pipeline's ``guidance_scale`` to 1 + w (the same
    v_null + (1 + w)(v_c - v_null)), 0 keeps the pipeline's default."""
    params, name = _params(pipe), type(pipe).__name__
    kw: dict = {"num_inference_steps": int(steps), "output_type": "np"}
    call: dict = {}
    labels = None
    if "class_labels" in params:
        labels = draw_labels(num_classes(pipe), n, seed, class_label)
        kw["class_labels"] = labels.tolist()
    elif class_label is not None:
        raise NoiseshiftError(f"{name} is not class-conditional; drop --class")
    if "prompt" in params:
        if not prompt:
            raise NoiseshiftError(f"{name} is a text-to-image pipeline: give --prompt")
        kw.update(prompt=prompt, num_images_per_prompt=n)
        call["prompt"] = prompt
    elif prompt is not None:
        raise NoiseshiftError(f"{name} takes no prompt; drop --prompt")
    elif "batch_size" in params:
        kw["batch_size"] = n
    if cfg_scale:
        if "guidance_scale" not in params:
            raise NoiseshiftError(f"{name} has no classifier-free guidance; drop --cfg-scale")
        kw["guidance_scale"] = call["guidance_scale"] = 1.0 + float(cfg_scale)
    return kw, labels, call


def state_shape(pipe) -> tuple[int, ...] | None:
    """The shape of one recorded state when it can be told before sampling: the UNet or DiT
    config's (in_channels, sample_size, sample_size) at the pipeline's default size."""
    shape = pipeline_shape(pipe)
    if shape is not None:
        return shape
    cfg = getattr(denoiser(pipe), "config", {}) or {}
    size, ch = cfg.get("sample_size"), cfg.get("in_channels")
    if type(pipe).__name__.startswith("Flux") or size is None or ch is None:
        return None
    return (int(ch), *((int(size),) * 2 if isinstance(size, int) else tuple(size)))


# -- guidance ---------------------------------------------------------------------------------

def pipeline_guide(pipe, estimator=None, *, nag_scale: float = 0.0,
                   nag_mode: str = DEFAULT_NAG_MODE, eps_scale=None, interval=None,
                   device: str = "cpu", dcw: float = 0.0,
                   dcw_form: str = DEFAULT_DCW_FORM) -> tuple[Guide | None, object]:
    """(a `Guide` to check the settings and name the run, or None without guidance; the
    estimator). ``estimator`` is an estimator or a checkpoint path; it must be trained for
    the schedule the pipeline's states map onto and for their shape."""
    check_mode(nag_mode, "diffusers", cli=True)
    if not nag_scale and eps_scale is None and not dcw:
        return None, None
    est = None
    if nag_scale:
        if estimator is None:
            family = SchedulerView(pipe.scheduler).family
            raise NoiseshiftError(f"NAG on a diffusers pipeline needs --estimator est.pt, "
                                  f"trained for the {family} schedule on the pipeline's states "
                                  f"(noiseshift train-estimator --schedule {family})")
        est = estimator
        if isinstance(estimator, (str, Path)):
            if Path(estimator).suffix != ".pt" and not Path(estimator).exists():
                raise NoiseshiftError(f"--estimator {estimator} on a diffusers pipeline must be "
                                      f"a checkpoint (named estimators need the data the "
                                      f"pipeline was trained on)")
            est = get_estimator(estimator, device=device)
    g = Guide(pipe, est, nag_scale, mode=nag_mode, interval=interval, eps_scale=eps_scale,
              dcw=dcw, dcw_form=dcw_form)
    if g.editor.passthrough:
        return None, None
    shape = state_shape(pipe)
    if shape is not None:
        g.editor.check_shape(shape)
    return g, est


# -- the run and how it is drawn ---------------------------------------------------------

def pipeline_spec(pipe, *, n: int, steps: int, seed: int = 0, call: dict | None = None,
                  labels=None, guidance: dict | None = None, run: str | None = None,
                  record_n: int | None = None, record_every: int = 1,
                  data: dict | None = None) -> RunSpec:
    """The `RunSpec` of a call of ``pipe``: its ``sampler`` attribute is the scheduler's
    description (`SchedulerView.describe`) at ``steps`` steps with the call's settings
    (``call``, from `pipeline_call`); its ``model`` attribute `describe_pipeline`."""
    settings = {**SchedulerView(pipe.scheduler).describe(), "steps": int(steps)}
    if call:
        settings["call"] = dict(call)
    return RunSpec.make(settings, describe_pipeline(pipe, data), n=n, seed=seed,
                        labels=labels, guidance=guidance, run=run, record_n=record_n,
                        record_every=record_every)


@dataclass
class PipelineBackend:
    """How runs of a diffusers pipeline are drawn and recorded: ``pipe(**kw)`` (``kw`` from
    `pipeline_call`) with a generator seeded by the spec, inside `record`, and, for a guided
    spec, inside `guide(pipe, **guide_kw)`. diffusers draws its own progress bars: no
    per-step callback."""

    pipe: object
    kw: dict
    guide_kw: dict | None = None
    data: dict | None = None
    source: str | None = None
    grid: dict | None = None  # {"timesteps": [...]} or {"sigmas": [...]} (`pipeline_grid`)

    def draw(self, spec: RunSpec, path=None, callback=None):
        """(the final states: latents for latent pipelines, the decoded images in [-1, 1] as
        (N, C, H, W) or None), recorded as run ``spec.run`` of ``path`` unless None."""
        with self._grid(), self._recording(spec, path), self._guiding(spec):
            result, last = _call(self.pipe, self.kw, spec.seed)
        images = _images(result)
        if last is not None and images is not None and last.shape[0] == 2 * images.shape[0]:
            last = last[: images.shape[0]]  # DiT's doubled batch
        return last, images

    def summary(self, spec: RunSpec) -> dict:
        """What `noiseshift sample` prints about the model and sampler of ``spec``."""
        return {"model": self.source, "pipeline": type(self.pipe).__name__,
                "sampler": {k: spec.settings[k] for k in ("name", "steps", "spacing")}}

    def _grid(self):
        """The custom grid and, with "relabel", the network's timesteps, while drawing."""
        stack = contextlib.ExitStack()
        grid = dict(self.grid or {})
        relabel = grid.pop("relabel", None)
        if grid:
            stack.enter_context(custom_grid(self.pipe.scheduler, **grid))
        if relabel is not None:
            table = dict(zip(grid["timesteps"], relabel, strict=True))
            stack.enter_context(relabelled(self.pipe.unet, table))
        return stack

    def _recording(self, spec: RunSpec, path):
        if path is None:
            return contextlib.nullcontext()
        labels = None if spec.labels is None else spec.y[:spec.recorded]
        return record(self.pipe, path, spec.run, overwrite=True, max_samples=spec.record_n,
                      every=spec.record_every, seed=spec.seed, labels=labels, data=self.data,
                      attrs=spec.attrs())

    def _guiding(self, spec: RunSpec):
        if not spec.guided or self.guide_kw is None:
            return contextlib.nullcontext()
        return guide(self.pipe, **self.guide_kw)


def pipeline_run(pipe, *, n: int, steps: int, seed: int = 0, estimator=None,
                 nag_scale: float = 0.0, nag_mode: str = DEFAULT_NAG_MODE, eps_scale=None,
                 interval=None, class_label=None, prompt: str | None = None,
                 cfg_scale: float = 0.0, run: str | None = None, record_n: int | None = None,
                 record_every: int = 1, data: dict | None = None,
                 source: str | None = None, dcw: float = 0.0,
                 dcw_form: str = DEFAULT_DCW_FORM,
                 timesteps=None, grid: dict | None = None) -> tuple[RunSpec, PipelineBackend]:
    """(the spec, the backend) of ``n`` samples from ``pipe`` with ``steps`` steps and seed
    ``seed``, guided by estimator-based NAG / epsilon scaling when asked (`pipeline_guide`);
    every check that can fail is made here, before anything is drawn or written.
    ``grid`` replaces the scheduler's grid (`pipeline_grid`: a `noiseshift retime` file's
    "diffusers" lists, or {"timesteps": [...]} or {"sigmas": [...]}); ``timesteps`` is
    short for grid={"timesteps": timesteps}. The step count is then the grid's."""
    if timesteps is not None and grid is None:
        grid = {"timesteps": timesteps}
    if grid is not None:
        key, values = pipeline_grid(pipe, grid)
        relabel = grid_relabel(pipe, grid, key, values)
        grid, steps = {key: values, **relabel}, len(values) - (key == "sigmas")
    kw, labels, call = pipeline_call(pipe, n=n, steps=steps, seed=seed,
                                     class_label=class_label, prompt=prompt,
                                     cfg_scale=cfg_scale)
    if grid is not None:
        call.update(grid)
    g, est = pipeline_guide(pipe, estimator, nag_scale=nag_scale, nag_mode=nag_mode,
                            eps_scale=eps_scale, interval=interval, device=pipe.device.type,
                            dcw=dcw, dcw_form=dcw_form)
    spec = pipeline_spec(pipe, n=n, steps=steps, seed=seed, call=call, labels=labels,
                         guidance=UNGUIDED if g is None else g.guidance, run=run,
                         record_n=record_n, record_every=record_every, data=data)
    guide_kw = None if g is None else dict(estimator=est, scale=nag_scale, mode=nag_mode,
                                           interval=interval, eps_scale=eps_scale, dcw=dcw,
                                           dcw_form=dcw_form)
    return spec, PipelineBackend(pipe, kw, guide_kw, data, source, grid)


def pipeline_grid(pipe, grid: dict) -> tuple[str, list]:
    """(key, checked values) of the list in ``grid`` that ``pipe.scheduler`` takes
    (`retime_diffusers.pick_grid`: its sigmas where it takes sigmas of their kind, else
    integer timesteps; a DDIM scheduler is swapped for `retime_diffusers.DDIM_AS`, the same
    update taking custom timesteps)."""
    if not isinstance(grid, dict) or not grid.keys() & {"timesteps", "sigmas"}:
        raise NoiseshiftError("a diffusers grid needs \"timesteps\" or \"sigmas\"")
    if type(pipe.scheduler).__name__ == "DDIMScheduler" and "timesteps" in grid:
        return "timesteps", grid_timesteps(pipe, grid["timesteps"])
    key, values = pick_grid(pipe.scheduler, grid)
    if key == "timesteps":
        return key, grid_timesteps(pipe, values)
    values = grid_sigmas(values)
    with custom_grid(pipe.scheduler, sigmas=values) as sch:
        if not sch.config.get("use_dynamic_shifting", False):  # else it needs the call's mu
            sch.set_timesteps()  # refuses a config that turns them into other sigmas
    return key, values


def grid_relabel(pipe, grid: dict, key: str, values) -> dict:
    """{"relabel": the network's timestep at each of the grid's timesteps} (a `noiseshift
    retime --relabel` file), checked, or {}."""
    relabel = grid.get("relabel")
    if relabel is None:
        return {}
    try:
        relabel = [float(v) for v in relabel]
    except (TypeError, ValueError):
        relabel = []
    n_train = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
    if key != "timesteps" or len(relabel) != len(values) or getattr(pipe, "unet", None) is None \
            or not all(0 <= v <= n_train - 1 for v in relabel):
        raise NoiseshiftError(f"a relabel needs a UNet pipeline whose scheduler takes the grid's "
                              f"timesteps, and one timestep in 0..{n_train - 1} for each")
    return {"relabel": relabel}


def grid_sigmas(sigmas) -> list[float]:
    """Checked sigmas: finite, strictly decreasing, the last (the end of sampling) >= 0."""
    try:
        s = [float(v) for v in sigmas]
    except (TypeError, ValueError):
        raise NoiseshiftError("diffusers sigmas must be numbers") from None
    falls = all(b < a for a, b in zip(s, s[1:], strict=False))
    if len(s) < 2 or not falls or not np.isfinite(s).all() or s[-1] < 0:
        raise NoiseshiftError("diffusers sigmas must be finite, at least 2, strictly "
                              "decreasing and end at >= 0 (the last is where sampling ends)")
    return s


def grid_timesteps(pipe, timesteps) -> list[int]:
    """Checked integer timesteps for ``pipe.scheduler`` (a DDIM scheduler is swapped for
    `retime_diffusers.DDIM_AS`, the same update taking custom timesteps)."""
    try:
        ts = [int(v) for v in timesteps]
        whole = all(float(v) == t for v, t in zip(timesteps, ts, strict=True))
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise NoiseshiftError("diffusers timesteps must be integers (for sigmas: "
                              "sigmas:S0,S1,...,0)")
    n_train = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
    falls = all(b < a for a, b in zip(ts, ts[1:], strict=False))
    if not ts or not falls or ts[-1] < 0 or ts[0] >= n_train:
        raise NoiseshiftError(f"diffusers timesteps must decrease strictly within "
                              f"0..{n_train - 1}")
    if type(pipe.scheduler).__name__ == "DDIMScheduler":
        import diffusers

        if pipe.scheduler.config.get("clip_sample"):
            raise NoiseshiftError("this DDIM scheduler clips x0 (clip_sample) and its "
                                  "custom-grid stand-in cannot: set clip_sample off or drop "
                                  "--timesteps")

        cls, extra = DDIM_AS
        pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **extra)
    with custom_grid(pipe.scheduler, timesteps=ts):  # refuses a scheduler without them
        pass
    return ts


def guard_pipeline(pipe, spec: RunSpec, backend: PipelineBackend, **options
                   ) -> tuple[RunSpec, PipelineBackend]:
    """The do-no-harm check (`analysis.safety.guarded`) of a NAG run of ``pipe`` made by
    `pipeline_run(pipe, **options)`: pilots at halved scales, read by an independent meter
    fitted on the data the run names, else the data the guiding estimator learned."""
    gk = backend.guide_kw
    if not spec.guided or gk is None or not gk["scale"]:
        return spec, backend
    est = gk["estimator"]
    meter = independent_meter(backend.data or est.data_spec_, est.schedule_, avoid=est.name)
    opts = {**options, "estimator": est}

    def make(scale: float, n: int):
        pilot, b = pipeline_run(pipe, **{**opts, "nag_scale": scale, "n": n})
        return pilot.guidance, b

    return guarded(spec, make, gk["scale"], meter)


def sample_pipeline(pipe, path=None, run: str | None = None, *, max_samples: int | None = None,
                    every: int = 1, on_baseline=None, **options) -> PipelineRun:
    """Sample ``pipe`` as `pipeline_run` (``options``: n, steps, seed, estimator, nag_scale,
    nag_mode, eps_scale, interval, class_label, prompt, cfg_scale, data) and record it as
    run ``run`` of ``path`` (None: no recording) next to its unguided baseline, which is
    found in the file or recorded first with the same seed and the same recorded subset
    (``max_samples``, ``every``); `recording.record_with_baseline`. ``on_baseline(name)`` is
    called before a baseline is recorded. A run of the same name is replaced."""
    spec, backend = pipeline_run(pipe, run=run, record_n=max_samples, record_every=every,
                                 **options)
    rec = record_with_baseline(spec, backend, path, on_baseline=on_baseline)
    return PipelineRun(rec.samples, rec.images, spec.y, rec.run, rec.baseline, spec.guidance,
                       rec.overwrote, rec.seconds)


def _call(pipe, kw: dict, seed: int):
    """``pipe(**kw)`` with a generator seeded ``seed``; returns (its output, the last
    ``prev_sample``: the final states, latents for latent pipelines)."""
    gen = torch.Generator(device=pipe.device.type).manual_seed(int(seed))
    sch = pipe.scheduler
    own = sch.__dict__.get("step")  # the hook's wrapper when record/guide is on
    inner = sch.step
    last = []

    def step(*args, **kwargs):
        out = inner(*args, **kwargs)
        last[:] = [out.prev_sample if hasattr(out, "prev_sample") else out[0]]
        return out

    sch.step = step
    try:
        with torch.no_grad():
            result = pipe(**kw, generator=gen)
    finally:
        if own is None:
            del sch.step
        else:
            sch.step = own
    return result, (last[0].detach().float().cpu() if last else None)


def _images(result) -> torch.Tensor | None:
    images = getattr(result, "images", None)
    if images is None and isinstance(result, tuple) and result:
        images = result[0]
    if images is None:
        return None
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        return None
    x = torch.from_numpy(x)
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC in [0, 1] -> NCHW
    return x * 2 - 1


# -- the command line: `noiseshift sample --model diffusers:DIR` -------------------------------

PREFIX = "diffusers:"
DIFFUSERS_ONLY = ("--scheduler", "--spacing", "--prompt", "--allow-download")


def is_diffusers(model: str | None) -> bool:
    return model is not None and str(model).startswith(PREFIX)


def refuse_diffusers_options(**given) -> None:
    """One line when an option of diffusers pipelines is given for a built-in model."""
    for opt, value in zip(DIFFUSERS_ONLY, given.values(), strict=True):
        if value is not None:
            raise NoiseshiftError(f"{opt} applies to --model diffusers:DIR only")


def refuse_builtin_options(sampler, diffusion, eta, time_shift) -> None:
    """One line when an option of the built-in samplers is given for a pipeline."""
    for opt, bad in (("--sampler", sampler != DEFAULT_SAMPLER), ("--diffusion", diffusion),
                     ("--eta", eta), ("--time-shift", time_shift)):
        if bad is not None and bad is not False:
            hint = "; use --scheduler" if opt == "--sampler" else ""
            raise NoiseshiftError(f"{opt} does not apply to diffusers pipelines{hint}")


def folder_run(model: str, *, scheduler=None, spacing=None, device: str = "auto",
               progress: bool = False, allow_download: bool = False, safety: bool = False,
               **options) -> tuple[RunSpec, PipelineBackend]:
    """`pipeline_run` of the pipeline ``model`` ("diffusers:DIR" or "diffusers:ORG/NAME[@REV]",
    loaded with ``scheduler`` / ``spacing`` onto ``device``; ids from the Hugging Face cache,
    downloaded only with ``allow_download``; ``progress`` shows diffusers' bars); with
    ``safety``, NAG is checked first (`guard_pipeline`)."""
    folder = model[len(PREFIX):]
    if not folder:
        raise NoiseshiftError("--model diffusers: needs a pipeline folder or Hub id "
                              "(diffusers:DIR or diffusers:ORG/NAME)")
    pipe = load_pipeline(folder, scheduler=scheduler, spacing=spacing,
                         device=resolve_device(device), progress=progress,
                         allow_download=allow_download)
    pipe.set_progress_bar_config(disable=not progress)
    spec, backend = pipeline_run(pipe, source=model, **options)
    if safety:
        return guard_pipeline(pipe, spec, backend, source=model, **options)
    return spec, backend


__all__ = ["PREFIX", "PipelineBackend", "PipelineRun", "Recorded", "folder_run",
           "guard_pipeline", "is_diffusers", "num_classes", "pipeline_call", "pipeline_guide",
           "pipeline_run",
           "pipeline_spec", "refuse_builtin_options", "refuse_diffusers_options",
           "sample_pipeline", "state_shape"]
