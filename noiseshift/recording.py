"""Record sampler runs into trajectory files, and a guided run next to its matching baseline.

A guided run says something only beside an unguided run with the same model, sampler
settings, seed, n and labels: the same noise, so the two sets of samples pair up. This module
is where that pairing lives, for the CLI (`noiseshift sample`), the demo and the model
adapters alike. A run is a `RunSpec`; how it is drawn is a backend's (`SamplerBackend` here,
`integrations.pipeline_runs.PipelineBackend` for diffusers pipelines):

    from noiseshift.recording import SamplerBackend, load_denoiser, record_with_baseline
    from noiseshift.runspec import RunSpec
    model = load_denoiser()                      # the built-in default, or a checkpoint path
    guided, desc = build_guidance(model, nag_scale=1.5, estimator=est)
    spec = RunSpec.for_model(model, n=512, guidance=desc)
    rec = record_with_baseline(spec, SamplerBackend(model, guided), "traj.h5")
    rec.run, rec.baseline                        # e.g. "nag-estimator-step-1.5", "unguided"

`sample_and_record` records one run of a denoiser.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
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
from .runspec import RunSpec
from .sampling import block_shard, chain, sample, sample_across_ranks

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
    """The run's ``model`` attribute for a denoiser: `models.describe(model)` and where it
    came from (a checkpoint path, or "default")."""
    return {**describe(model), "path": source or "default"}


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


@dataclass
class SamplerBackend:
    """How runs of a denoiser are drawn and recorded: `sampling.sample` on ``model`` for an
    unguided spec, on ``guided`` (a guidance wrapper of it; default ``model``) for a guided
    one, on ``device``; ``save_x0`` records the x0 predictions too; ``source`` is where the
    model came from (a checkpoint path; None: the built-in default)."""

    model: object
    guided: object = None
    device: str = "auto"
    save_x0: bool = True
    source: str | None = None

    def summary(self, spec: RunSpec) -> dict:
        """What `noiseshift sample` prints about the model and sampler of ``spec``."""
        return {"model": self.source or "default", "sampler": spec.settings}

    def draw(self, spec: RunSpec, path=None, callback: Callback | None = None):
        """(the n samples of ``spec``, None: no images apart from them), recorded as run
        ``spec.run`` of ``path`` (replacing a run of that name) unless ``path`` is None.

        Only ``spec.recorded`` samples and every ``spec.record_every``-th step are recorded;
        all n are still drawn, and when some are left out the run also holds
        ``all_samples`` (and ``all_labels``). Under torchrun each rank draws its blocks of
        samples (`sampling.block_shard`) into a shard file, and rank 0 merges the shards
        into ``path`` (`io.shards`); rank 0 returns all n samples, the other ranks their own.
        """
        net = self.guided if spec.guided and self.guided is not None else self.model
        skw = dict(sampler=spec.sampler, steps=spec.steps, seed=spec.seed, y=spec.y,
                   device=self.device, shape=model_shape(net), **spec.sampler_options())
        if path is None:
            return sample_across_ranks(net, spec.n, callback=callback, **skw), None
        m, every = spec.recorded, spec.record_every
        wkw = dict(n=m, shape=skw["shape"], schedule=net.schedule.to_dict(),
                   save_x0=self.save_x0, seed=spec.seed, steps=-(-spec.steps // every),
                   labels=None if spec.labels is None else np.asarray(spec.labels[:m]),
                   **{k: v for k, v in spec.attrs().items() if k != "seed"})
        if distributed.world()[1] > 1:
            return _sample_sharded(net, path, spec, wkw, skw, callback), None
        with TrajectoryWriter(path, spec.run, overwrite=True, **wkw) as w:
            out = sample(net, spec.n, callback=chain(_subset(w.callback, m, every), callback),
                         **skw)
            for name, data in _extras(out.cpu().numpy(), spec.y, m).items():
                w.attach(name, data)
            w.finish(out[:m])
        return out, None


def sample_and_record(model, path, run: str, n: int, *, callback: Callback | None = None,
                      device="auto", save_x0: bool = True, **options) -> torch.Tensor:
    """`sampling.sample`, recording the steps into run ``run`` of the HDF5 trajectory file
    ``path`` (format v1; a run of that name is replaced). ``options`` resolve the run's
    `RunSpec` (`RunSpec.for_model`: sampler, steps, seed, y, guidance, model_info, t range,
    record_n / record_every, the sampler's options); see `SamplerBackend.draw`. Returns the
    samples."""
    spec = RunSpec.for_model(model, n=n, run=run, **options)
    return SamplerBackend(model, device=device, save_x0=save_x0).draw(spec, path, callback)[0]


def _sample_sharded(model, path, spec: RunSpec, wkw, skw, callback):
    """`SamplerBackend.draw` under torchrun: shards, a barrier, rank 0 merges."""
    rank, ws = distributed.world()
    run, n, m, every = spec.run, spec.n, spec.recorded, spec.record_every
    if rank == 0:  # the final path's checks (folder, format, run name) before any work
        TrajectoryWriter(path, run, overwrite=True, **wkw).close()
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




def look_up(path, spec: RunSpec) -> tuple[list[str], str | None]:
    """(the names of the runs in ``path``, the name of the first run there that
    ``spec.baseline()`` matches, or None; looked for only when ``spec`` is guided), in one
    opening of the file. A missing file holds no runs."""
    if path is None or not Path(path).exists():
        return [], None
    base = spec.baseline()
    with open_trajectories(path) as f:
        found = next((r.name for r in f if base.matches(r)), None) if spec.guided else None
        return list(f.runs), found


@dataclass
class Recorded:
    """What `record_with_baseline` did: the samples of run ``run`` (on the model's device;
    None when not recorded), its unguided ``baseline`` (None for an unguided run), whether
    it replaced a run, the seconds the run took (a baseline recorded first not included),
    and the decoded images when the backend makes them (diffusers pipelines)."""

    samples: torch.Tensor | None
    run: str | None
    baseline: str | None
    overwrote: bool
    seconds: float
    images: torch.Tensor | None = None


def record_with_baseline(spec: RunSpec, backend, path=None, *,
                         callback: Callback | None = None,
                         on_baseline: Callable[[str], Callback | None] | None = None
                         ) -> Recorded:
    """Record run ``spec`` into ``path`` with ``backend`` (``backend.draw(spec, path,
    callback)`` -> (samples, images or None): `SamplerBackend`, or a diffusers
    `PipelineBackend`), next to its unguided baseline: the run in the file that
    ``spec.baseline()`` matches, or, when there is none, one recorded first as 'unguided'
    (or, when that name is taken, a name with the settings: `RunSpec.baseline_name`).
    ``on_baseline(name)`` is called before a baseline is recorded and may return its sampler
    callback. An unguided spec needs no baseline; ``path`` None draws without recording.
    """
    taken, found = look_up(path, spec)
    baseline = None
    if spec.guided and path is not None:
        baseline = found or _record_baseline(spec, backend, path, taken, on_baseline)
    t0 = time.perf_counter()
    samples, images = backend.draw(spec, path, callback)
    return Recorded(samples, None if path is None else spec.run, baseline, spec.run in taken,
                    time.perf_counter() - t0, images)


def _record_baseline(spec: RunSpec, backend, path, taken, on_baseline) -> str:
    base = spec.baseline(spec.baseline_name(taken))
    if base.run == spec.run:
        raise NoiseshiftError(f"run {spec.run!r} is the name the unguided baseline needs; "
                              f"choose another")
    backend.draw(base, path, None if on_baseline is None else on_baseline(base.run))
    return base.run


__all__ = ["Recorded", "SamplerBackend", "describe_model", "load_denoiser", "look_up",
           "needs_training", "record_with_baseline", "sample_and_record"]
