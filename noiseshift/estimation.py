"""Run estimators over a trajectory file, streaming, and summarise the shift per step.

`estimate_file` reads every recorded state of the chosen runs chunk by chunk (memory stays
flat whatever the file size), writes `<file>.estimates.h5` through a temporary file and a
rename, and returns per-step summaries. `summarize` gives the same records from arrays, e.g.
from an estimates file read back later.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .data import Dataset, check_shape, load_data, parse_data_spec
from .errors import NoiseshiftError, TrajectoryError
from .estimators import NoiseLevelEstimator, in_zones
from .io import (
    DEFAULT_MAX_BYTES,
    EstimatesWriter,
    Run,
    estimates_path,
    open_estimates,
    open_trajectories,
)
from .pretrained import NAMES, get_estimator

Z95 = 1.959963984540054


# -- per-step summaries ---------------------------------------------------------------------

class StepStats:
    """Streaming per-step sums of t' (and its posterior std) over samples."""

    def __init__(self, num_steps: int):
        self.n = np.zeros(num_steps, dtype=np.int64)
        self.s1 = np.zeros(num_steps)
        self.s2 = np.zeros(num_steps)
        self.sd = np.zeros(num_steps)

    def add(self, step: int, t_hat, t_std=None) -> None:
        v = np.asarray(t_hat, dtype=np.float64).reshape(-1)
        self.n[step] += v.size
        self.s1[step] += v.sum()
        self.s2[step] += (v**2).sum()
        if t_std is not None:
            self.sd[step] += np.asarray(t_std, dtype=np.float64).sum()

    def records(self, t, reference, blind_zones: Sequence[Sequence[float]] = ()) -> list[dict]:
        """One record per step: t, reference(t), mean t', delta = mean t' - reference(t)
        with a normal 95% CI over samples, the spread of t' over samples, the mean posterior
        std, and whether t is in a blind zone."""
        t, ref = np.asarray(t, dtype=np.float64), np.asarray(reference, dtype=np.float64)
        n = np.maximum(self.n, 1)
        mean = self.s1 / n
        var = np.maximum(self.s2 / n - mean**2, 0.0) * n / np.maximum(n - 1, 1)
        half = Z95 * np.sqrt(var / n)
        delta = mean - ref
        blind = in_zones(t, blind_zones)
        return [
            {"step": i, "t": float(t[i]), "reference": float(ref[i]), "t_hat": float(mean[i]),
             "t_hat_sd": float(math.sqrt(var[i])), "t_std": float(self.sd[i] / n[i]),
             "delta": float(delta[i]), "ci_low": float(delta[i] - half[i]),
             "ci_high": float(delta[i] + half[i]), "n": int(self.n[i]), "blind": bool(blind[i])}
            for i in range(len(t))
        ]


def summarize(t, reference, t_hat, blind_zones: Sequence[Sequence[float]] = (),
              t_std=None) -> list[dict]:
    """Per-step records (see `StepStats.records`) from t (S,), reference (S,) and the
    readings t_hat (S, N) (and optionally t_std (S, N))."""
    t_hat = np.asarray(t_hat)
    stats = StepStats(t_hat.shape[0])
    for i in range(t_hat.shape[0]):
        stats.add(i, t_hat[i], None if t_std is None else np.asarray(t_std)[i])
    return stats.records(t, reference, blind_zones)


def summarize_estimates(est) -> list[dict]:
    """Per-step records from one `trajectories.Estimates` entry of an estimates file."""
    zones = (est.calibration or {}).get("blind_zones", [])
    return summarize(est.t, est.reference, est.t_hat, zones, est.t_std)


def overall(records: list[dict]) -> dict:
    """Mean delta over all steps and over the steps outside blind zones."""
    d = np.array([r["delta"] for r in records])
    seen = np.array([not r["blind"] for r in records])
    return {"mean_delta": float(d.mean()),
            "mean_delta_readable": float(d[seen].mean()) if seen.any() else None,
            "mean_abs_delta_readable": float(np.abs(d[seen]).mean()) if seen.any() else None}


# -- choosing an estimator for a run ----------------------------------------------------------

def run_data_spec(run: Run):
    """The data spec a run's model was trained on (its `model` attribute), or None."""
    spec = run.attrs.get("model", {}).get("data")
    return spec if isinstance(spec, (dict, str)) else None


def check_compatible(est: NoiseLevelEstimator, run: Run) -> None:
    """Raise NoiseshiftError unless `est` reads `run`'s states under `run`'s schedule."""
    where = f"run {run.name!r}"
    if tuple(est.shape_) != tuple(run.shape):
        raise NoiseshiftError(f"{where} has states of shape {tuple(run.shape)}, but the "
                              f"{est.name} estimator reads {tuple(est.shape_)}", run.path)
    if est.schedule_ != run.schedule:
        raise NoiseshiftError(f"{where} was sampled under the {_sch(run.schedule)} schedule, "
                              f"but the {est.name} estimator is for {_sch(est.schedule_)}",
                              run.path)


def _sch(s) -> str:
    d = s.to_dict()
    extra = {k: v for k, v in d.items() if k != "name"}
    return d["name"] + (f" {json.dumps(extra)}" if extra else "")


class EstimatorCache:
    """Resolve an estimator name or checkpoint path for a run, fitting (or loading) each
    distinct (estimator, data, schedule) once."""

    def __init__(self, device="auto", batch_size: int | None = None, train_progress=None,
                 data: str | dict | None = None):
        self.device, self.batch_size, self.train_progress = device, batch_size, train_progress
        self.data = None if data is None else parse_data_spec(data)
        self._cache: dict[str, NoiseLevelEstimator] = {}
        self._datasets: dict[str, Dataset] = {}

    def _dataset(self, spec: dict, run: Run) -> Dataset:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in self._datasets:
            self._datasets[key] = load_data(spec)
        data = self._datasets[key]
        check_shape(data, run.shape, f"run {run.name!r}", run.path)
        return data

    def get(self, name_or_path, run: Run) -> NoiseLevelEstimator:
        named = str(name_or_path) in NAMES
        spec = (self.data or run_data_spec(run)) if named else None
        if named and spec is None:
            raise NoiseshiftError(
                f"run {run.name!r} does not say which data its model was trained on (no `data` "
                f"in its `model` attribute), so the {name_or_path} estimator cannot be chosen "
                f"for it; pass --data SPEC (the data its model learned) or --estimator est.pt",
                run.path)
        key = json.dumps([str(name_or_path), spec, run.schedule.to_dict() if named else None],
                         sort_keys=True, default=str)
        if key not in self._cache:
            data = self._dataset(parse_data_spec(spec), run) if named else None
            est = get_estimator(name_or_path, data, run.schedule, device=self.device,
                                progress=self.train_progress)
            if self.batch_size:
                est.batch_size = int(self.batch_size)
            self._cache[key] = est
        est = self._cache[key]
        check_compatible(est, run)
        return est


# -- running over a file ------------------------------------------------------------------------

@dataclass
class RunEstimate:
    run: str
    estimator: str
    identity: dict
    blind_zones: list
    records: list[dict]

    def to_dict(self) -> dict:
        return {"run": self.run, "estimator": self.estimator, "identity": self.identity,
                "blind_zones": self.blind_zones, **overall(self.records),
                "steps": self.records}


@dataclass
class EstimateResult:
    path: Path
    results: list[RunEstimate] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # "run/estimator" carried over from `path`

    def to_dict(self) -> dict:
        return {"estimates": str(self.path), "kept": self.kept,
                "results": [r.to_dict() for r in self.results]}


def estimate_file(path, estimators: str | Sequence[str] = "learned", *, out=None,
                  runs: Sequence[str] | None = None, device="auto",
                  batch_size: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                  progress: Callable[[int, int], None] | None = None,
                  train_progress: Callable[[dict], None] | None = None,
                  data: str | dict | None = None) -> EstimateResult:
    """Read t' for every recorded state of `runs` (default: all) with each estimator (names
    or checkpoint paths), write them to `out` (default `<stem>.estimates.h5`), and return
    per-step summaries.

    The input is never modified. Readings already in `out` for other estimators or runs of the
    same trajectories are kept. `progress(done, total)` counts states read. `data` (a
    `--data` spec) names the data the runs' model learned, for estimators fitted on data
    (learned, variance, wavelet, ...); by default each run's `model` attribute says.

    Under torchrun the ranks split each run's blocks of states round-robin; rank 0 gathers
    the readings, writes them in the single-process order (so the file is identical to a
    single-process one) and every rank returns the same result.
    """
    path = Path(path)
    names = [estimators] if isinstance(estimators, (str, Path)) else list(estimators)
    out = estimates_path(path) if out is None else Path(out)
    cache = EstimatorCache(device, batch_size, train_progress, data)
    with open_trajectories(path) as tf:
        # All ranks together: an estimator trained on first use trains under DDP, collectively.
        plan = _plan(tf, cache, names, runs)
        result = EstimateResult(out)
        main = distributed.is_main()
        with EstimatesWriter(out, path) if main else contextlib.nullcontext() as ew:
            if main:
                result.kept = _keep_existing(ew, out, tf, {(r.name, e.name) for r, es in plan
                                                          for e in es})
            result.results = _read_runs(plan, ew, max_bytes, progress)
    return distributed.broadcast(result)


def _read_runs(plan, ew: EstimatesWriter | None, max_bytes: int, progress) -> list:
    """Every run of the plan read block by block into the writer and the per-step sums, and
    its `RunEstimate`s; ``ew`` is None on the ranks but 0, which only read."""
    total = sum(r.num_steps * r.n for r, _ in plan)
    results, done = [], 0
    for run, ests in plan:
        stats = _start(ew, run, ests) if ew is not None else None
        for i, sl, readings in _readings(run, ests, max_bytes):
            for est, st, (t_hat, t_std) in zip(ests, stats, readings, strict=True):
                ew.add(run.name, est.name, i, sl, t_hat, t_std)
                st.add(i, t_hat, t_std)
            done += sl.stop - sl.start
            if progress is not None:
                progress(done, total)
        if ew is not None:
            results += _run_results(run, ests, stats)
    return results


def _plan(tf, cache: EstimatorCache, names, runs) -> list:
    """[(run, [estimator, ...]), ...]: a missing run or a wrong estimator fails here, before
    any work."""
    plan = []
    for name in (list(tf.runs) if not runs else list(dict.fromkeys(runs))):
        run = tf.run(name)
        ests = [cache.get(e, run) for e in names]
        keys = [e.name for e in ests]
        if len(set(keys)) != len(keys):
            raise NoiseshiftError(f"two estimators of the same kind ({keys}); pass one of each")
        plan.append((run, ests))
    return plan


def _predict(ests, block) -> list:
    x = torch.from_numpy(block)
    out = []
    for est in ests:
        t_hat, t_std = est.predict(x)
        out.append((t_hat.cpu().numpy(), t_std.cpu().numpy()))
    return out


def _readings(run: Run, ests, max_bytes: int):
    """(step, sample slice, [(t_hat, t_std) per estimator]) for every block of ``run``, in
    file order. Under torchrun each rank reads blocks c = rank, rank + ws, ...; rank 0
    yields everyone's (gathered), the other ranks nothing."""
    rank, ws = distributed.world()
    if ws == 1:
        for i, sl, block in run.iter_chunks(max_bytes):
            yield i, sl, _predict(ests, block)
        return
    mine = [(i, sl.start, sl.stop, _predict(ests, block))
            for i, sl, block in run.iter_chunks(max_bytes, select=lambda c: c % ws == rank)]
    parts = distributed.gather(mine)
    if parts is None:
        return
    # Rank r's k-th block is block k * ws + r: put them back in file order.
    longest = max(len(p) for p in parts)
    for k in range(longest):
        for p in parts:
            if k < len(p):
                i, lo, hi, readings = p[k]
                yield i, slice(lo, hi), readings


def _run_results(run: Run, ests, stats) -> list[RunEstimate]:
    out = []
    for est, st in zip(ests, stats, strict=True):
        zones = [list(z) for z in est.blind_zones()]
        out.append(RunEstimate(run.name, est.name, est.to_dict(), zones,
                               st.records(run.t, est.reference(run.t), zones)))
    return out


def _start(ew: EstimatesWriter, run: Run, ests) -> list[StepStats]:
    for est in ests:
        ew.add_estimator(run.name, est.name, estimator=est.config(),
                         calibration=est.calibration_dict(), reference=est.reference(run.t))
    return [StepStats(run.num_steps) for _ in ests]


def _keep_existing(ew: EstimatesWriter, out: Path, tf, redo: set) -> list[str]:
    """Copy readings from an existing estimates file at `out` that belong to the same runs
    (same fingerprint) and are not being recomputed. A damaged or foreign file is replaced."""
    if not out.exists():
        return []
    entries = []
    try:  # read everything first, so a damaged old file never leaves half an entry
        with open_estimates(out) as old:
            for run in old.runs:
                names = [n for n in old.estimators(run) if (run, n) not in redo]
                # Fingerprints read states, so only when there is something to keep.
                if not names or run not in tf.runs or (
                        tf.run(run).fingerprint() != old.fingerprint(run)):
                    continue
                for name in names:
                    e = old.get(run, name)
                    entries.append((run, name, e.estimator, e.calibration, e.reference,
                                    e.t_hat, e.t_std))
    except TrajectoryError:
        return []
    for run, name, identity, calibration, reference, t_hat, t_std in entries:
        ew.add_estimator(run, name, estimator=identity, calibration=calibration,
                         reference=reference)
        for i in range(len(reference)):
            ew.add(run, name, i, slice(None), t_hat[i], t_std[i])
    return [f"{run}/{name}" for run, name, *_ in entries]


__all__ = ["EstimateResult", "EstimatorCache", "RunEstimate", "StepStats", "check_compatible",
           "estimate_file", "in_zones", "overall", "run_data_spec", "summarize",
           "summarize_estimates"]
