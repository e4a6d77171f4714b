"""Sample a diffusers pipeline and record it beside its matching unguided baseline.

What `noiseshift sample --model diffusers:DIR` does, as a library call:

    from noiseshift.integrations.pipeline_runs import sample_pipeline
    pipe = load_pipeline("ddpm-digits/", scheduler="ddim")
    out = sample_pipeline(pipe, "traj.h5", n=64, steps=20, seed=0, estimator=est,
                          nag_scale=1.5)
    out.run, out.baseline          # "nag-estimator-step-1.5", "unguided"

A guided run says something only beside an unguided run of the same pipeline, scheduler,
steps, seed, recorded subset, labels and call settings (prompt, guidance scale): the same
noise, so the samples pair up. As for built-in models (`recording.record_with_baseline`), the
baseline is looked up in the file (`recording.find_baseline`) and recorded first when absent.
Every check that can fail is made before anything is written.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..defaults import DEFAULT_SAMPLER
from ..errors import NoiseshiftError
from ..guidance import DEFAULT_NAG_MODE
from ..io.images import save_grid
from ..pretrained import get_estimator
from ..recording import baseline_name, find_baseline, recorded_settings, run_exists, run_name
from ..sampling import draw_labels
from .diffusers import (
    Guide,
    Recorder,
    denoiser,
    describe_model,
    guide,
    load_pipeline,
    pipeline_shape,
    record,
)
from .guided import check_mode
from .schedulers import SchedulerView

UNGUIDED = {"kind": "none"}


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
                   device: str = "cpu") -> tuple[Guide | None, object]:
    """(a `Guide` to check the settings and name the run, or None without guidance; the
    estimator). ``estimator`` is an estimator or a checkpoint path; it must be trained for
    the schedule the pipeline's states map onto and for their shape."""
    check_mode(nag_mode, "diffusers", cli=True)
    if not nag_scale and eps_scale is None:
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
    g = Guide(pipe, est, nag_scale, mode=nag_mode, interval=interval, eps_scale=eps_scale)
    if g.editor.passthrough:
        return None, None
    shape = state_shape(pipe)
    if shape is not None:
        g.editor.check_shape(shape)
    return g, est


# -- the command line: `noiseshift sample --model diffusers:DIR` -------------------------------

PREFIX = "diffusers:"
DIFFUSERS_ONLY = ("--scheduler", "--spacing", "--prompt")


def is_diffusers(model: str | None) -> bool:
    return model is not None and str(model).startswith(PREFIX)


def refuse_diffusers_options(**given) -> None:
    """One line when an option of diffusers pipelines is given for a built-in model."""
    for opt, value in zip(DIFFUSERS_ONLY, given.values(), strict=True):
        if value is not None:
            raise NoiseshiftError(f"{opt} applies to --model diffusers:DIR only")


def _refuse_builtin_options(sampler, diffusion, eta, time_shift) -> None:
    for opt, bad in (("--sampler", sampler != DEFAULT_SAMPLER), ("--diffusion", diffusion),
                     ("--eta", eta), ("--time-shift", time_shift)):
        if bad is not None and bad is not False:
            hint = "; use --scheduler" if opt == "--sampler" else ""
            raise NoiseshiftError(f"{opt} does not apply to diffusers pipelines{hint}")


def sample_pipeline_folder(model: str, *, scheduler, spacing, prompt, class_, steps: int, n: int,
                     seed: int, nag_scale: float, nag_mode: str, cfg_scale: float, eps_scale,
                     interval, estimator, path: Path | None, run, grid: Path | None,
                     device: str, quiet: bool, sampler: str, diffusion, eta, time_shift,
                     max_samples: int | None = None, every: int = 1, progress: bool = False,
                     say=print) -> tuple[dict, Path | None, str | None]:
    """`noiseshift sample --model diffusers:DIR` (its options, parsed): load the folder,
    sample and record it beside its baseline (`sample_pipeline`), save the grid; returns (the
    summary the command prints, the trajectory path, the run name). ``say`` prints a line
    (not called with ``quiet``); ``progress`` shows diffusers' progress bars."""
    _refuse_builtin_options(sampler, diffusion, eta, time_shift)
    if grid is not None and grid.suffix.lower() != ".png":
        raise NoiseshiftError("--grid needs a .png file name", grid)
    folder = model[len(PREFIX):]
    if not folder:
        raise NoiseshiftError("--model diffusers: needs a pipeline folder (diffusers:DIR)")
    dev = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    bars = not quiet and progress
    pipe = load_pipeline(folder, scheduler=scheduler, spacing=spacing, device=dev,
                         progress=bars)
    pipe.set_progress_bar_config(disable=not bars)

    def on_baseline(name: str) -> None:
        if not quiet:
            say(f"no unguided run with these settings in {path}; recording one first as "
                f"{name}")

    out = sample_pipeline(pipe, path, run, n=n, steps=steps, seed=seed, estimator=estimator,
                          nag_scale=nag_scale, nag_mode=nag_mode, eps_scale=eps_scale,
                          interval=interval, class_label=class_, prompt=prompt,
                          cfg_scale=cfg_scale, max_samples=max_samples, every=every,
                          on_baseline=on_baseline)
    if out.overwrote and not quiet:
        say(f"run {out.run} existed in {path}; replaced it")
    if grid is not None:
        if out.images is None or out.images.shape[1] not in (1, 3):
            raise NoiseshiftError(f"--grid needs image output; {type(pipe).__name__} returned "
                                  f"none")
        labels = None if out.labels is None else out.labels[:64]
        save_grid(out.images[:64], grid, labels=labels)
    return _summary(model, pipe, out, n=n, steps=steps, seed=seed, path=path, grid=grid), \
        path, out.run


def _summary(model: str, pipe, out: PipelineRun, *, n, steps, seed, path, grid) -> dict:
    samples = out.samples if out.samples is not None else out.images
    view = pipe.scheduler
    return {
        "model": model, "pipeline": type(pipe).__name__,
        "sampler": {"name": type(view).__name__, "steps": steps,
                    "spacing": view.config.get("timestep_spacing")},
        "guidance": out.guidance, "n": n, "shape": list(samples.shape[1:]), "seed": seed,
        "seconds": round(out.seconds, 3), "record": None if path is None else str(path),
        "run": out.run, "overwrote": out.overwrote, "baseline": out.baseline,
        "grid": None if grid is None else str(grid),
        "sample_mean": float(samples.mean()), "sample_std": float(samples.std()),
    }


# -- sampling and recording -------------------------------------------------------------------

def sample_pipeline(pipe, path=None, run: str | None = None, *, n: int, steps: int,
                    seed: int = 0, estimator=None, nag_scale: float = 0.0,
                    nag_mode: str = DEFAULT_NAG_MODE, eps_scale=None, interval=None,
                    class_label=None, prompt: str | None = None, cfg_scale: float = 0.0,
                    max_samples: int | None = None, every: int = 1, data: dict | None = None,
                    on_baseline=None) -> PipelineRun:
    """Sample ``n`` from ``pipe`` with ``steps`` steps and seed ``seed`` (the same seed, the
    same samples), guided by estimator-based NAG / epsilon scaling when asked (`guide`), and
    record it as run ``run`` of ``path`` (None: no recording) next to its unguided baseline,
    which is found in the file or recorded first with the same seed and the same recorded
    subset (``max_samples``, ``every``). ``on_baseline(name)`` is called before a baseline is
    recorded. A run of the same name is replaced."""
    kw, labels, call = pipeline_call(pipe, n=n, steps=steps, seed=seed,
                                     class_label=class_label, prompt=prompt,
                                     cfg_scale=cfg_scale)
    g, est = pipeline_guide(pipe, estimator, nag_scale=nag_scale, nag_mode=nag_mode,
                            eps_scale=eps_scale, interval=interval, device=pipe.device.type)
    guidance = UNGUIDED if g is None else g.guidance
    name = (run or run_name(guidance)) if path is not None else None
    rec_kw = dict(max_samples=max_samples, every=every, seed=seed, data=data, call=call,
                  labels=None if labels is None else labels[:max_samples or n])
    overwrote = path is not None and run_exists(path, name)
    if path is not None:  # the writer's checks (folder, file), before any sampling
        Recorder(pipe, path, name, overwrite=True, **rec_kw)
    baseline = None
    if path is not None and g is not None:
        baseline = _baseline(pipe, path, name, kw, steps, n, on_baseline, rec_kw)
    t0 = time.perf_counter()
    with _recording(pipe, path, name, rec_kw), _guiding(pipe, est, nag_scale, nag_mode,
                                                        eps_scale, interval, g):
        result, last = _call(pipe, kw, seed)
    seconds = time.perf_counter() - t0
    images = _images(result)
    if last is not None and images is not None and last.shape[0] == 2 * images.shape[0]:
        last = last[: images.shape[0]]  # DiT's doubled batch
    return PipelineRun(last, images, labels, name, baseline, guidance, overwrote, seconds)


def expected_sampler(pipe, steps: int, every: int, max_samples, call: dict, n: int) -> dict:
    """The ``sampler`` attribute `record` will write for a call of n samples, ``steps``
    steps."""
    out = {**SchedulerView(pipe.scheduler).describe(), "steps": int(steps)}
    if call:
        out["call"] = dict(call)
    return recorded_settings(out, n, max_samples, every)


def _baseline(pipe, path, avoid: str, kw: dict, steps: int, n: int, on_baseline,
              rec_kw: dict) -> str:
    """The matching unguided run in ``path`` (`recording.find_baseline`), recorded first
    when there is none; its name."""
    rows = min(n, rec_kw["max_samples"] or n)  # DiT's doubled batch is recorded once
    seed = rec_kw["seed"]
    found = find_baseline(path, sampler=expected_sampler(pipe, steps, rec_kw["every"],
                                                         rec_kw["max_samples"],
                                                         rec_kw["call"], n),
                          seed=seed, n=rows, labels=rec_kw["labels"],
                          model_info=describe_model(pipe, rec_kw["data"]))
    if found is not None:
        return found
    short = type(pipe.scheduler).__name__.removesuffix("Scheduler")
    name = baseline_name(path, short, steps, seed, n)
    if name == avoid:
        raise NoiseshiftError(f"run {avoid!r} is the name the unguided baseline needs; "
                              f"choose another")
    if on_baseline is not None:
        on_baseline(name)
    with record(pipe, path, name, overwrite=True, **rec_kw):
        _call(pipe, kw, seed)
    return name


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


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _recording(pipe, path, name, rec_kw):
    return _Null() if path is None else record(pipe, path, name, overwrite=True, **rec_kw)


def _guiding(pipe, est, scale, mode, eps_scale, interval, g):
    if g is None:
        return _Null()
    return guide(pipe, est, scale, mode=mode, interval=interval, eps_scale=eps_scale)


__all__ = ["PREFIX", "PipelineRun", "expected_sampler", "is_diffusers", "num_classes",
           "pipeline_call", "pipeline_guide", "refuse_diffusers_options", "sample_pipeline",
           "sample_pipeline_folder", "state_shape"]
