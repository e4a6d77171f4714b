"""Record sampler runs into trajectory files, and a guided run next to its matching baseline.

A guided run says something only beside an unguided run with the same model, sampler
settings, seed, n and labels: the same noise, so the two sets of samples pair up. This module
is where that pairing lives, for the CLI (`noiseshift sample`), the demo and the model
adapters alike:

    from noiseshift.recording import load_denoiser, record_with_baseline
    model = load_denoiser()                      # the built-in default, or a checkpoint path
    guided, desc = build_guidance(model, nag_scale=2.0, estimator=est)
    rec = record_with_baseline(model, "traj.h5", guided=guided, guidance=desc, n=512)
    rec.run, rec.baseline                        # e.g. "nag-estimator-noise-2", "unguided"

`sample_and_record` records one run; `find_baseline`, `baseline_name`, `run_exists` and
`record_baseline` are the steps `record_with_baseline` takes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import NoiseshiftError
from .io import TrajectoryWriter, open_trajectories
from .models import describe, model_shape
from .pretrained import default_model_path, load_or_default
from .sampling import chain, draw_labels, safe_t_max, sample, sampler_settings

UNGUIDED = {"kind": "none"}

Callback = Callable[[dict], None]


def load_denoiser(model=None, device: str = "auto",
                  progress: Callable[[dict], None] | None = None):
    """A denoiser: the checkpoint at path ``model``, or the built-in default when None
    (trained and cached on first use; ``progress(info)`` then receives the training steps,
    and is not called when the cache has it). See `needs_training`."""
    return load_or_default(None if model is None else str(model), device=device,
                           progress=progress)


def needs_training(model=None) -> bool:
    """Whether `load_denoiser(model)` will train (the default model, not yet cached)."""
    return model is None and not default_model_path().exists()


def describe_model(model, source: str | None = None) -> dict:
    """The run's ``model`` attribute: `models.describe(model)` and where it came from (a
    checkpoint path, or "default")."""
    return {**describe(model), "path": source or "default"}


def run_name(guidance: dict | None) -> str:
    """The default run name: 'unguided', or the guidance's kind."""
    kind = (guidance or UNGUIDED).get("kind", "none")
    return "unguided" if kind == "none" else str(kind)


def sample_and_record(model, path, run: str, n: int, *, sampler: str = DEFAULT_SAMPLER,
                      steps: int = DEFAULT_STEPS, seed: int = 0, y=None, callback=None,
                      device="auto", guidance: dict | None = None,
                      model_info: dict | None = None, save_x0: bool = True,
                      overwrite: bool = True, t_max: float = 1.0, t_min: float = 0.0,
                      **sampler_kw) -> torch.Tensor:
    """`sampling.sample`, recording every step into run ``run`` of the HDF5 trajectory file
    ``path`` (format v1). ``guidance`` is the run's guidance dict ({"kind": "none"} when
    empty); ``model_info`` defaults to `models.describe(model)`. Returns the samples."""
    t_max = safe_t_max(model, t_max)
    settings = sampler_settings(sampler, steps, t_max, t_min, **sampler_kw)
    shape = model_shape(model)
    labels = draw_labels(model.num_classes, n, seed, y)
    with TrajectoryWriter(
        path, run, n=n, shape=shape, schedule=model.schedule.to_dict(), sampler=settings,
        guidance=guidance or UNGUIDED,
        model=describe(model) if model_info is None else model_info, seed=int(seed),
        labels=None if labels is None else labels.numpy(), save_x0=save_x0,
        overwrite=overwrite,
    ) as w:
        out = sample(model, n, sampler=sampler, steps=steps, seed=seed, y=labels,
                     callback=chain(w.callback, callback), device=device, shape=shape,
                     t_max=t_max, t_min=t_min, **sampler_kw)
        w.finish(out)
    return out


def run_exists(path, run: str) -> bool:
    """Whether ``path`` already holds run ``run`` (False for a missing file)."""
    path = Path(path)
    if not path.exists():
        return False
    with open_trajectories(path) as f:
        return run in f.runs


def find_baseline(path, *, sampler: dict, seed: int, n: int, labels,
                  model_info: dict) -> str | None:
    """The name of a complete unguided run in ``path`` with the same model, sampler
    settings, seed, n and labels (the baseline a guided run is compared with), or None."""
    path = Path(path)
    if not path.exists():
        return None
    same = json.loads(json.dumps(sampler)), json.loads(json.dumps(model_info))
    with open_trajectories(path) as f:
        for run in f:
            a = run.attrs
            if (run.complete and a["guidance"].get("kind", "none") == "none"
                    and (a["sampler"], a["model"]) == same and a["seed"] == seed and run.n == n
                    and (labels is None) == (run.labels is None)
                    and (labels is None or np.array_equal(run.labels, np.asarray(labels)))):
                return run.name
    return None


def baseline_name(path, sampler: str, steps: int, seed: int, n: int) -> str:
    """'unguided', or a name with the settings when 'unguided' is taken by other settings."""
    return "unguided" if not run_exists(path, "unguided") else (
        f"unguided-{sampler}-{steps}-seed{seed}-n{n}")


def record_baseline(model, path, *, n: int, seed: int = 0, sampler: str = DEFAULT_SAMPLER,
                    steps: int = DEFAULT_STEPS, y=None, model_info: dict | None = None,
                    device="auto", save_x0: bool = True, avoid: str | None = None,
                    on_record: Callable[[str], Callback | None] | None = None,
                    **sampler_kw) -> str:
    """Make sure ``path`` holds the unguided run of ``model`` that a run with these settings
    is compared with (same model info, sampler settings, seed, n and labels); record one when
    it does not. Returns its name.

    ``avoid`` is a name the new baseline must not take (the guided run's). ``on_record(name)``
    is called before a new baseline is recorded and may return a sampler callback for it.
    """
    info = describe(model) if model_info is None else model_info
    settings = sampler_settings(sampler, steps, safe_t_max(model), **sampler_kw)
    labels = draw_labels(model.num_classes, n, seed, y)
    found = find_baseline(path, sampler=settings, seed=seed, n=n, labels=labels,
                          model_info=info)
    if found is not None:
        return found
    base = baseline_name(path, sampler, steps, seed, n)
    if base == avoid:
        raise NoiseshiftError(f"run {avoid!r} is the name the unguided baseline needs; "
                              f"choose another")
    callback = on_record(base) if on_record is not None else None
    sample_and_record(model, path, base, n, sampler=sampler, steps=steps, seed=seed, y=y,
                      guidance=UNGUIDED, model_info=info, callback=callback, device=device,
                      save_x0=save_x0, **sampler_kw)
    return base


@dataclass
class Recorded:
    """What `record_with_baseline` did: the samples of run ``run`` (on the model's device),
    its unguided ``baseline`` (None for an unguided run), whether it replaced a run, and the
    seconds the run took (a baseline recorded first not included)."""

    samples: torch.Tensor
    run: str
    baseline: str | None
    overwrote: bool
    seconds: float


def record_with_baseline(model, path, run: str | None = None, *, guided=None,
                         guidance: dict | None = None, n: int, seed: int = 0,
                         sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS, y=None,
                         model_info: dict | None = None, device="auto", save_x0: bool = True,
                         callback: Callback | None = None,
                         on_baseline: Callable[[str], Callback | None] | None = None,
                         **sampler_kw) -> Recorded:
    """Record ``guided`` (a guidance wrapper of ``model``, described by ``guidance``) as run
    ``run`` of ``path``, next to the matching unguided run of ``model``.

    The baseline is found in the file or recorded first (see `record_baseline`; ``on_baseline``
    is its ``on_record``). Without guidance (``guided`` None or ``guidance`` kind "none") the
    run is itself unguided and needs no baseline. ``run`` defaults to `run_name(guidance)`;
    a run of that name is replaced. ``model_info`` (default `models.describe(model)`) goes into
    both runs. ``callback`` is the sampler callback of the run; ``sampler_kw`` go to the sampler.
    """
    guidance = guidance or UNGUIDED
    guided = model if guided is None else guided
    name = run or run_name(guidance)
    info = describe(model) if model_info is None else model_info
    overwrote = run_exists(path, name)
    common = dict(n=n, seed=seed, sampler=sampler, steps=steps, y=y, model_info=info,
                  device=device, save_x0=save_x0, **sampler_kw)
    baseline = None
    if guidance.get("kind", "none") != "none":
        baseline = record_baseline(model, path, avoid=name, on_record=on_baseline, **common)
    t0 = time.perf_counter()
    samples = sample_and_record(guided, path, name, guidance=guidance, callback=callback,
                                **common)
    return Recorded(samples, name, baseline, overwrote, time.perf_counter() - t0)


__all__ = ["Recorded", "baseline_name", "describe_model", "find_baseline", "load_denoiser",
           "needs_training", "record_baseline", "record_with_baseline", "run_exists",
           "run_name", "sample_and_record"]
