"""Estimates files: an estimator's readings t' of every state of a trajectory file, written
all or nothing (`EstimatesWriter`, `write_estimates`) and read back (`open_estimates`).

The file is written to a temporary file beside its final path and renamed over it only once
every (step, sample) cell holds a reading; a crash leaves the final path as it was.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import NoiseshiftError, TrajectoryError
from .atomic import install, sibling_temp
from .h5 import (
    ESTIMATES_FORMAT,
    ESTIMATES_VERSION,
    ReadOnlyFile,
    check_run_name,
    dumps,
    guard,
    member,
    set_str,
    str_attr,
    to_numpy,
)
from .trajectories import Run, open_trajectories

__all__ = [
    "Estimates", "EstimatesFile", "EstimatesWriter", "estimates_path", "open_estimates",
    "validate_estimates", "write_estimates",
]


def estimates_path(trajectory_path) -> Path:
    """Default estimates file for a trajectory file: <stem>.estimates.h5 beside it."""
    p = Path(trajectory_path)
    return p.with_name(f"{p.stem}.estimates.h5")


class EstimatesWriter:
    """Write an estimates file for trajectory file `source`, streaming, all or nothing.

        with EstimatesWriter(out, "traj.h5") as ew:
            ew.add_estimator(run, "learned", estimator=est_identity, calibration=cal,
                             reference=est.reference(run.t))
            for i, sl, block in run.iter_chunks():
                t_hat, t_std = est.predict(block)
                ew.add(run.name, "learned", i, sl, t_hat, t_std)

    Everything goes to a temporary file in the output's folder, renamed over `path` when the
    block exits cleanly (and after every (step, sample) cell has been written); on an
    exception, or a kill, the final path is left as it was.
    """

    def __init__(self, path, source, overwrite: bool = True):
        self.path, self.source = Path(path), Path(source)
        if not self.path.parent.is_dir():
            raise NoiseshiftError(f"folder {str(self.path.parent)!r} does not exist",
                                  self.path)
        if self.path.exists() and not overwrite:
            raise NoiseshiftError("exists; pass --overwrite to replace it", self.path)
        if self.path.resolve() == self.source.resolve():
            raise NoiseshiftError("estimates would overwrite their own trajectory file",
                                  self.path)
        self._src = open_trajectories(source)
        self._tmp: Path | None = None
        self._f: h5py.File | None = None
        self._left: dict[tuple[str, str], np.ndarray] = {}
        self._meta: dict[str, Run] = {}

    def __enter__(self) -> EstimatesWriter:
        self._tmp = sibling_temp(self.path, "partial")
        self._f = h5py.File(self._tmp, "w")
        set_str(self._f, "format", ESTIMATES_FORMAT)
        self._f.attrs["version"] = np.int64(ESTIMATES_VERSION)
        set_str(self._f, "source", str(self.source))
        self._f.create_group("runs")
        return self

    def _run_group(self, run: str) -> h5py.Group:
        if run not in self._meta:
            r = self._src.run(run)
            self._meta[run] = r
            g = self._f["runs"].create_group(run)
            set_str(g, "fingerprint", r.fingerprint())
            g.create_dataset("t", data=r.t, dtype="f8")
        return self._f["runs"][run]

    def add_estimator(self, run: str, name: str, *, estimator: dict, calibration: dict | None,
                      reference) -> None:
        """Start estimator `name`'s readings for `run`: its identity, calibration, and its
        reading of true x_t at each recorded t (`reference`, (S,))."""
        check_run_name(name)
        g = self._run_group(run)
        r = self._meta[run]
        ref = np.asarray(to_numpy(reference), dtype=np.float64).reshape(-1)
        if ref.shape != (r.num_steps,):
            raise ValueError(f"reference has shape {ref.shape}; run {run!r} has "
                             f"{r.num_steps} steps")
        e = g.create_group(name)
        set_str(e, "estimator", dumps(estimator))
        set_str(e, "calibration", dumps(calibration))
        rows = max(1, min(r.num_steps, 2**18 // r.n))
        for key in ("t_hat", "t_std"):
            e.create_dataset(key, shape=(r.num_steps, r.n), dtype="f4", fillvalue=np.nan,
                             chunks=(rows, r.n))
        e.create_dataset("reference", data=ref, dtype="f8")
        self._left[(run, name)] = np.full(r.num_steps, r.n, dtype=np.int64)

    def add(self, run: str, name: str, step: int, samples: slice, t_hat, t_std) -> None:
        """Readings for samples `samples` (a slice) of step `step`."""
        left = self._left.get((run, name))
        if left is None:
            raise ValueError(f"call add_estimator({run!r}, {name!r}, ...) first")
        e = self._f["runs"][run][name]
        th = np.asarray(to_numpy(t_hat), dtype=np.float32).reshape(-1)
        ts = np.asarray(to_numpy(t_std), dtype=np.float32).reshape(-1)
        lo, hi, _ = samples.indices(e["t_hat"].shape[1])
        if th.shape != (hi - lo,) or ts.shape != (hi - lo,):
            raise ValueError(f"{hi - lo} samples in the slice, readings of shape {th.shape}")
        e["t_hat"][step, lo:hi] = th
        e["t_std"][step, lo:hi] = ts
        left[step] -= hi - lo

    def commit(self) -> Path:
        missing = [f"{r}/{n}" for (r, n), left in self._left.items() if left.any()]
        if missing:
            raise RuntimeError(f"estimates not written for every state of {missing}")
        self._f.flush()
        self._f.close()
        self._f = None
        install(self._tmp, self.path)
        self._tmp = None
        self._src.close()
        return self.path

    def abort(self) -> None:
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        self._src.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.abort()


def write_estimates(path, source, entries) -> Path:
    """Write a whole estimates file at once.

    entries: iterable of dicts {"run", "estimator" (name), "identity" (dict), "calibration"
    (dict), "reference" (S,), "t_hat" (S, N), "t_std" (S, N)}.
    """
    with EstimatesWriter(path, source) as ew:
        for en in entries:
            ew.add_estimator(en["run"], en["estimator"], estimator=en.get("identity", {}),
                             calibration=en.get("calibration"), reference=en["reference"])
            th, ts = np.asarray(to_numpy(en["t_hat"])), np.asarray(to_numpy(en["t_std"]))
            for i in range(th.shape[0]):
                ew.add(en["run"], en["estimator"], i, slice(None), th[i], ts[i])
    return Path(path)


class Estimates:
    """One estimator's readings of one run: (S, N) arrays, loaded on first use."""

    def __init__(self, group: h5py.Group, run: str, name: str, t: np.ndarray, n: int, path):
        self.run, self.name, self.path, self._g = run, name, path, group
        where = f"run {run!r} estimator {name!r}: "
        self.num_steps, self.n = len(t), n
        self.t = t
        for key in ("estimator", "calibration"):
            raw = str_attr(group.attrs.get(key, "{}"))
            try:
                val = json.loads(raw) if raw is not None else None
            except (ValueError, RecursionError):
                val = None
            if not isinstance(val, dict):
                raise TrajectoryError(f"{where}attribute `{key}` must be a JSON object", path)
            setattr(self, key, val)
        for key, dims in (("t_hat", 2), ("t_std", 2), ("reference", 1)):
            ds = member(group, key, path, where)
            want = (self.num_steps, n)[:dims]
            if ds is None:
                raise TrajectoryError(f"{where}no `{key}` dataset", path)
            if ds.dtype.kind != "f" or ds.shape != want:
                raise TrajectoryError(f"{where}{key} must be float {want}, got {ds.dtype} "
                                      f"{ds.shape}", path)
        if n == 0:  # nothing was read: every summary of it would be a mean of nothing
            raise TrajectoryError(f"{where}t_hat holds no samples (N = 0)", path)
        self._cache: dict[str, np.ndarray] = {}

    def _get(self, key: str) -> np.ndarray:
        if key not in self._cache:
            with guard(self.path, f"run {self.run!r} estimator {self.name!r} {key}"):
                a = np.asarray(self._g[key][()], dtype=np.float64 if key == "reference"
                               else np.float32)
            if not np.isfinite(a).all():
                raise TrajectoryError(f"run {self.run!r} estimator {self.name!r}: {key} "
                                      f"contains NaN or Inf", self.path)
            self._cache[key] = a
        return self._cache[key]

    t_hat = property(lambda self: self._get("t_hat"))
    t_std = property(lambda self: self._get("t_std"))
    reference = property(lambda self: self._get("reference"))

    @property
    def delta(self) -> np.ndarray:
        """Noise shift per state, (S, N): calibrated reading minus the reading of true x_t."""
        return self.t_hat - self.reference[:, None]


class EstimatesFile(ReadOnlyFile):
    """An open estimates file (read-only). Use as a context manager."""

    def __init__(self, path):
        super().__init__(path, ESTIMATES_FORMAT, ESTIMATES_VERSION, "estimates")

    def _read(self) -> None:
        with guard(self.path, "the estimates file"):
            self.source = str_attr(self._f.attrs.get("source")) or ""
            self.runs: list[str] = list(self._runs.keys())
            self._t = {r: self._run_t(r) for r in self.runs}

    def _run_t(self, run: str) -> np.ndarray:
        g = member(self._runs, run, self.path, "/runs/", kind=h5py.Group)
        ds = member(g, "t", self.path, f"run {run!r}: ")
        if ds is None or ds.ndim != 1 or ds.dtype.kind != "f" or ds.shape[0] == 0:
            raise TrajectoryError(f"run {run!r}: missing or bad `t`", self.path)
        if str_attr(g.attrs.get("fingerprint")) is None:
            raise TrajectoryError(f"run {run!r}: no `fingerprint` attribute", self.path)
        return np.asarray(ds[()], dtype=np.float64)

    def estimators(self, run: str) -> list[str]:
        self._check_run(run)
        with guard(self.path, f"run {run!r}"):
            g = self._runs[run]
            return [k for k in g.keys() if isinstance(g.get(k), h5py.Group)]

    def _check_run(self, run: str) -> None:
        if run not in self.runs:
            raise TrajectoryError(f"no run {run!r} in this estimates file; it has "
                                  f"{', '.join(map(repr, self.runs))}", self.path)

    def get(self, run: str, estimator: str) -> Estimates:
        names = self.estimators(run)
        if estimator not in names:
            raise TrajectoryError(f"no estimator {estimator!r} for run {run!r}; it has "
                                  f"{', '.join(map(repr, names)) or 'none'}", self.path)
        with guard(self.path, f"run {run!r} estimator {estimator!r}"):
            g = self._runs[run][estimator]
            t_hat = g.get("t_hat")
            n = int(t_hat.shape[1]) if isinstance(t_hat, h5py.Dataset) and t_hat.ndim == 2 \
                else 0
            return Estimates(g, run, estimator, self._t[run], n, self.path)

    def fingerprint(self, run: str) -> str:
        self._check_run(run)
        with guard(self.path, f"run {run!r}"):
            return str_attr(self._runs[run].attrs["fingerprint"])

    def check_matches(self, trajectory_path) -> None:
        """Raise TrajectoryError unless every run here has its identical run in the
        trajectory file (same metadata, t, states and samples)."""
        with open_trajectories(trajectory_path) as tf:
            for run in self.runs:
                why = None
                if run not in tf.runs:
                    why = f"{trajectory_path} has no run {run!r}"
                elif tf.run(run).fingerprint() != self.fingerprint(run):
                    why = f"run {run!r} in {trajectory_path} differs"
                if why:
                    raise TrajectoryError(f"estimates were made from a different trajectory "
                                          f"file ({why})", self.path)

    def summary(self) -> dict:
        runs = []
        for run in self.runs:
            for name in self.estimators(run):
                e = self.get(run, name)
                d = e.delta
                runs.append({"run": run, "estimator": name, "steps": e.num_steps, "n": e.n,
                             "mean_delta": float(d.mean()), "max_abs_delta":
                             float(np.abs(d.mean(1)).max()), "identity": e.estimator})
        return {"path": self.path, "kind": "estimates", "format": ESTIMATES_FORMAT,
                "version": ESTIMATES_VERSION, "valid": True, "source": self.source,
                "runs": runs}


def open_estimates(path) -> EstimatesFile:
    """Open an estimates file read-only."""
    return EstimatesFile(path)


def validate_estimates(path) -> dict:
    """Check an estimates file (structure and values) and summarise it."""
    with open_estimates(path) as ef:
        return ef.summary()
