"""Record sampler runs into trajectory files, and a guided run next to its matching baseline.

A guided run says something only beside an unguided run with the same model, sampler
settings, seed, n and labels: the same noise, so the two sets of samples pair up. This module
is where that pairing lives, for the CLI (`noiseshift sample`), the demo and the model
adapters alike:

    from noiseshift.recording import load_denoiser, record_with_baseline
    model = load_denoiser()                      # the built-in default, or a checkpoint path
    guided, desc = build_guidance(model, nag_scale=1.5, estimator=est)
    rec = record_with_baseline(model, "traj.h5", guided=guided, guidance=desc, n=512)
    rec.run, rec.baseline                        # e.g. "nag-estimator-step-1.5", "unguided"

`sample_and_record` records one run; `find_baseline`, `baseline_name`, `run_exists` and
`record_baseline` are the steps `record_with_baseline` takes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import NoiseshiftError
from .io import TrajectoryWriter, open_trajectories
from .io.shards import (
    merge_shards,
    new_shard_path,
    read_samples_shard,
    remove_shards,
    save_samples_shard,
)
from .models import describe, model_shape
from .pretrained import default_model_path, load_or_default
from .sampling import (
    block_shard,
    chain,
    draw_labels,
    safe_t_max,
    sample,
    sampler_settings,
)

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


def recorded_count(n: int, record_n: int | None) -> int:
    """How many samples a run records: the first ``record_n`` of n (all when None)."""
    if record_n is not None and record_n < 1:
        raise NoiseshiftError(f"--record-n must be at least 1, got {record_n}")
    return n if record_n is None else min(int(record_n), n)


def recorded_settings(settings: dict, n: int, record_n: int | None = None,
                      record_every: int = 1) -> dict:
    """The run's ``sampler`` attribute: the sampler settings, plus ``recorded`` = {"n",
    "samples", "every"} when only some samples or steps are recorded (so a baseline matches
    only a run that recorded the same subset)."""
    if record_every < 1:
        raise NoiseshiftError(f"--record-every must be at least 1, got {record_every}")
    m = recorded_count(n, record_n)
    if m == n and record_every == 1:
        return settings
    return {**settings, "recorded": {"n": int(n), "samples": m, "every": int(record_every)}}


def _subset(record: Callback, rows: int, every: int) -> Callback:
    """A sampler callback that passes on every ``every``-th step (i = 0, every, ...) of the
    first ``rows`` samples."""

    def call(info):
        if info["i"] % every == 0:
            x0 = info.get("x0_pred")
            record({**info, "x": info["x"][:rows], "x0_pred": None if x0 is None else x0[:rows]})

    return call


def _extras(samples: np.ndarray, labels, m: int) -> dict:
    """all_samples / all_labels when only the first m of the samples are recorded."""
    if m == len(samples):
        return {}
    out = {"all_samples": samples}
    if labels is not None:
        out["all_labels"] = np.asarray(labels)
    return out


def sample_and_record(model, path, run: str, n: int, *, sampler: str = DEFAULT_SAMPLER,
                      steps: int = DEFAULT_STEPS, seed: int = 0, y=None, callback=None,
                      device="auto", guidance: dict | None = None,
                      model_info: dict | None = None, save_x0: bool = True,
                      overwrite: bool = True, t_max: float = 1.0, t_min: float = 0.0,
                      record_n: int | None = None, record_every: int = 1,
                      **sampler_kw) -> torch.Tensor:
    """`sampling.sample`, recording the steps into run ``run`` of the HDF5 trajectory file
    ``path`` (format v1). ``guidance`` is the run's guidance dict ({"kind": "none"} when
    empty); ``model_info`` defaults to `models.describe(model)`. Returns the samples.

    ``record_n`` records only the first record_n samples and ``record_every`` only steps
    i = 0, K, 2K, ...; all n are still drawn, and when some are left out of the recording
    the run also holds ``all_samples`` (and ``all_labels``). Under torchrun each rank draws
    its blocks of samples (`sampling.block_shard`) and records them into a shard file, and
    rank 0 merges the shards into ``path`` (`io.shards`); rank 0 returns all n samples, the
    other ranks their own.
    """
    t_max = safe_t_max(model, t_max)
    settings = recorded_settings(sampler_settings(sampler, steps, t_max, t_min, **sampler_kw),
                                 n, record_n, record_every)
    shape = model_shape(model)
    labels = draw_labels(model.num_classes, n, seed, y)
    m = recorded_count(n, record_n)
    wkw = dict(n=m, shape=shape, schedule=model.schedule.to_dict(), sampler=settings,
               guidance=guidance or UNGUIDED, save_x0=save_x0, seed=int(seed),
               model=describe(model) if model_info is None else model_info,
               labels=None if labels is None else labels[:m].numpy(),
               steps=-(-steps // record_every))
    skw = dict(sampler=sampler, steps=steps, seed=seed, y=labels, device=device, shape=shape,
               t_max=t_max, t_min=t_min, **sampler_kw)
    if distributed.world()[1] > 1:
        return _sample_sharded(model, path, run, n, m, wkw, skw, overwrite, record_every,
                               callback)
    with TrajectoryWriter(path, run, overwrite=overwrite, **wkw) as w:
        out = sample(model, n, callback=chain(_subset(w.callback, m, record_every), callback),
                     **skw)
        for name, data in _extras(out.cpu().numpy(), labels, m).items():
            w.attach(name, data)
        w.finish(out[:m])
    return out


def _sample_sharded(model, path, run, n, m, wkw, skw, overwrite, every, callback):
    """`sample_and_record` under torchrun: shards, a barrier, rank 0 merges."""
    rank, ws = distributed.world()
    if rank == 0:  # the final path's checks (folder, format, run name) before any work
        TrajectoryWriter(path, run, overwrite=overwrite, **wkw).close()
    idx = block_shard(n, rank, ws)
    keep = len(range(idx.start, min(idx.stop, m)))
    labels = wkw["labels"]
    shard = new_shard_path(path, rank) if keep else None
    spath = new_shard_path(path, rank, "samples.npy")
    try:
        with contextlib.ExitStack() as stack:
            rec = None
            if shard is not None:
                w = stack.enter_context(TrajectoryWriter(shard, run, **{
                    **wkw, "n": keep,
                    "labels": None if labels is None else labels[idx.start:idx.start + keep]}))
                rec = _subset(w.callback, keep, every)
            out = sample(model, n, indices=idx, callback=chain(
                rec, callback if rank == 0 else None), **skw)
            if shard is not None:
                w.finish(out[:keep])
        save_samples_shard(spath, out.cpu().numpy())
        names = distributed.gather((None if shard is None else str(shard), str(spath)))
        if rank == 0:
            out = torch.from_numpy(np.concatenate([read_samples_shard(s) for _, s in names]))
            all_labels = None if skw["y"] is None else skw["y"].numpy()
            merge_shards([h for h, _ in names], path, run, writer={**wkw, "overwrite": True},
                         samples=out[:m].numpy(), extra=_extras(out.numpy(), all_labels, m))
        distributed.barrier()
    finally:
        remove_shards([shard, spath])
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
                    record_n: int | None = None, record_every: int = 1,
                    **sampler_kw) -> str:
    """Make sure ``path`` holds the unguided run of ``model`` that a run with these settings
    is compared with (same model info, sampler settings, seed, n and labels); record one when
    it does not. Returns its name.

    ``avoid`` is a name the new baseline must not take (the guided run's). ``on_record(name)``
    is called before a new baseline is recorded and may return a sampler callback for it.
    """
    info = describe(model) if model_info is None else model_info
    settings = recorded_settings(sampler_settings(sampler, steps, safe_t_max(model),
                                                  **sampler_kw), n, record_n, record_every)
    labels = draw_labels(model.num_classes, n, seed, y)
    m = recorded_count(n, record_n)
    found = find_baseline(path, sampler=settings, seed=seed, n=m,
                          labels=None if labels is None else labels[:m], model_info=info)
    if found is not None:
        return found
    base = baseline_name(path, sampler, steps, seed, n)
    if base == avoid:
        raise NoiseshiftError(f"run {avoid!r} is the name the unguided baseline needs; "
                              f"choose another")
    callback = on_record(base) if on_record is not None else None
    sample_and_record(model, path, base, n, sampler=sampler, steps=steps, seed=seed, y=y,
                      guidance=UNGUIDED, model_info=info, callback=callback, device=device,
                      save_x0=save_x0, record_n=record_n, record_every=record_every,
                      **sampler_kw)
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
                         record_n: int | None = None, record_every: int = 1,
                         **sampler_kw) -> Recorded:
    """Record ``guided`` (a guidance wrapper of ``model``, described by ``guidance``) as run
    ``run`` of ``path``, next to the matching unguided run of ``model``.

    The baseline is found in the file or recorded first (see `record_baseline`; ``on_baseline``
    is its ``on_record``). Without guidance (``guided`` None or ``guidance`` kind "none") the
    run is itself unguided and needs no baseline. ``run`` defaults to `run_name(guidance)`;
    a run of that name is replaced. ``model_info`` (default `models.describe(model)`) goes into
    both runs. ``callback`` is the sampler callback of the run; ``sampler_kw`` go to the sampler.
    ``record_n`` / ``record_every`` (see `sample_and_record`) apply to both runs alike.
    """
    guidance = guidance or UNGUIDED
    guided = model if guided is None else guided
    name = run or run_name(guidance)
    info = describe(model) if model_info is None else model_info
    overwrote = run_exists(path, name)
    common = dict(n=n, seed=seed, sampler=sampler, steps=steps, y=y, model_info=info,
                  device=device, save_x0=save_x0, record_n=record_n,
                  record_every=record_every, **sampler_kw)
    baseline = None
    if guidance.get("kind", "none") != "none":
        baseline = record_baseline(model, path, avoid=name, on_record=on_baseline, **common)
    t0 = time.perf_counter()
    samples = sample_and_record(guided, path, name, guidance=guidance, callback=callback,
                                **common)
    return Recorded(samples, name, baseline, overwrote, time.perf_counter() - t0)


__all__ = ["Recorded", "baseline_name", "describe_model", "find_baseline", "load_denoiser",
           "needs_training", "record_baseline", "record_with_baseline", "recorded_count",
           "recorded_settings", "run_exists", "run_name", "sample_and_record"]
