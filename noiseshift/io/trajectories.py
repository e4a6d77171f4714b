"""Reading trajectory files (format v1): `open_trajectories` gives a `TrajectoryFile` whose
runs (`Run`) have their metadata parsed and checked and their arrays read lazily.

The format is specified for outside writers in docs/trajectory-format.md; `io.writer` writes
it. A file is opened read-only and never modified; every structural problem is a one-line
TrajectoryError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np

from ..errors import NoiseshiftError, TrajectoryError
from ..schedules import get_schedule
from .h5 import (
    FORMAT,
    VERSION,
    ReadOnlyFile,
    guard,
    is_int,
    member,
    scalar_int,
    str_attr,
)

DEFAULT_MAX_BYTES = 64 * 2**20
JSON_ATTRS = ("schedule", "sampler", "guidance", "model")

__all__ = ["DEFAULT_MAX_BYTES", "Run", "Steps", "TrajectoryFile", "open_trajectories"]


class Steps:
    """The first `len(t)` rows of a states-like dataset, read lazily as h5py would.

    A run still being recorded (or killed) has rows reserved for steps not yet recorded;
    they are never shown. `.dataset` is the underlying h5py dataset.
    """

    def __init__(self, dataset: h5py.Dataset, num_steps: int, path, what: str):
        self.dataset, self.num_steps, self._path, self._what = dataset, num_steps, path, what

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_steps, *self.dataset.shape[1:])

    @property
    def dtype(self):
        return self.dataset.dtype

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    def __len__(self) -> int:
        return self.num_steps

    def __array__(self, dtype=None, copy=None):
        a = self[()]
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if key == ():
            key = (slice(None),)
        if key[0] is Ellipsis:
            key = (slice(None), *key)
        first = self._rows(key[0])
        with guard(self._path, self._what):
            return self.dataset[(first, *key[1:])]

    def _rows(self, k):
        s = self.num_steps
        if isinstance(k, slice):
            return slice(*k.indices(s))
        if is_int(k):
            i = int(k) + (s if k < 0 else 0)
            if not 0 <= i < s:
                raise IndexError(f"step {k} out of range for {s} steps")
            return i
        idx = np.asarray(k)
        if idx.dtype == bool:
            if idx.shape != (s,):
                raise IndexError(f"boolean index must have {s} entries")
            return np.flatnonzero(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= s):
            raise IndexError(f"step index out of range for {s} steps")
        return idx


class Run:
    """One recorded run: metadata parsed and checked, arrays read lazily.

    Built by `TrajectoryFile.run`; every structural problem raises TrajectoryError.
    """

    def __init__(self, group: h5py.Group, name: str, path):
        self.name, self.path, self._g = name, path, group
        where = f"run {name!r}: "
        self._where = where
        with guard(path, f"run {name!r}"):
            self.attrs = _run_attrs(group, path, where)
            self.complete: bool = self.attrs["complete"]
            self.t = _read_t(group, path, where)
            self.num_steps = len(self.t)
            st = member(group, "states", path, where)
            if st is None:
                raise TrajectoryError(f"{where}no `states` dataset", path)
            self.n, self.shape = _check_states(st, self.num_steps, self.complete, path, where)
            self.states = Steps(st, self.num_steps, path, f"run {name!r} states")
            x0 = member(group, "x0_pred", path, where)
            if x0 is not None:
                _check_like(x0, st, "x0_pred", self.complete, self.num_steps, path, where)
            self.x0_pred = None if x0 is None else Steps(x0, self.num_steps, path,
                                                         f"run {name!r} x0_pred")
            self.labels = _read_labels(group, self.n, path, where)
            self.samples = _read_samples_ds(group, self, path, where)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"Run({self.name!r}, steps={self.num_steps}, n={self.n}, shape={self.shape}, "
                f"{state})")

    @property
    def schedule(self):
        return get_schedule(self.attrs["schedule"])

    @property
    def row_bytes(self) -> int:
        """Bytes of one state (one sample at one step) as float32."""
        return 4 * math.prod(self.shape)

    def iter_chunks(self, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "states",
                    select: Callable[[int], bool] | None = None,
                    ) -> Iterator[tuple[int, slice, np.ndarray]]:
        """Stream `states` (or `x0_pred`) as (step index, sample slice, float32 block).

        Each block holds at most `max_bytes` (at least one sample), so memory stays flat
        however large the file. Blocks are checked for NaN and Inf as they stream by.
        ``select(c)`` (e.g. a rank's share) keeps only the c-th blocks it accepts, counted
        in this order from 0; the others are not read.
        """
        steps = self.states if what == "states" else self.x0_pred
        if steps is None:
            raise TrajectoryError(f"{self._where}no `{what}` dataset", self.path)
        per = max(1, int(max_bytes) // self.row_bytes)
        c = -1
        for i in range(self.num_steps):
            for lo in range(0, self.n, per):
                c += 1
                if select is not None and not select(c):
                    continue
                sl = slice(lo, min(self.n, lo + per))
                block = np.asarray(steps[i, sl], dtype=np.float32)
                if not np.isfinite(block).all():
                    raise TrajectoryError(f"{self._where}{what} contain NaN or Inf at step {i} "
                                          f"(t = {self.t[i]:.4g})", self.path)
                yield i, sl, block

    def check_finite(self, max_bytes: int = DEFAULT_MAX_BYTES,
                     progress: Callable[[int], None] | None = None) -> None:
        """Stream every recorded array through a NaN/Inf check (raises TrajectoryError)."""
        for what in ("states", "x0_pred"):
            if what == "x0_pred" and self.x0_pred is None:
                continue
            last = -1
            for i, _, _ in self.iter_chunks(max_bytes, what):
                if progress is not None and i != last:
                    progress(1)
                    last = i
        if self.samples is not None:
            per = max(1, int(max_bytes) // self.row_bytes)
            for lo in range(0, self.n, per):
                with guard(self.path, f"run {self.name!r} samples"):
                    block = self.samples[lo:lo + per]
                if not np.isfinite(block).all():
                    raise TrajectoryError(f"{self._where}samples contain NaN or Inf", self.path)

    def read_samples(self) -> np.ndarray | None:
        """The final samples as float32, checked for NaN and Inf (None for an incomplete
        run)."""
        if self.samples is None:
            return None
        with guard(self.path, f"run {self.name!r} samples"):
            a = np.asarray(self.samples[()], dtype=np.float32)
        if not np.isfinite(a).all():
            raise TrajectoryError(f"{self._where}samples contain NaN or Inf", self.path)
        return a

    def fingerprint(self) -> str:
        """A content hash identifying this run (metadata, t, first and last states, samples).

        Estimates files keep it to tell whether they belong to a trajectory file; copying or
        renaming the file, or adding other runs to it, keeps it.
        """
        h = hashlib.sha256()
        meta = {k: self.attrs[k] for k in (*JSON_ATTRS, "seed", "created", "complete")}
        meta.update(name=self.name, n=self.n, shape=list(self.shape), steps=self.num_steps)
        h.update(json.dumps(meta, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.t, dtype="<f8").tobytes())
        for i in sorted({0, self.num_steps - 1}):
            h.update(np.ascontiguousarray(self.states[i], dtype="<f4").tobytes())
        if self.samples is not None:
            with guard(self.path, f"run {self.name!r} samples"):
                h.update(np.ascontiguousarray(self.samples[()], dtype="<f4").tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name, "steps": self.num_steps, "n": self.n, "shape": list(self.shape),
            "t_first": float(self.t[0]), "t_last": float(self.t[-1]),
            "complete": self.complete, "x0_pred": self.x0_pred is not None,
            "labels": self.labels is not None, **{k: self.attrs[k] for k in JSON_ATTRS},
            "seed": self.attrs["seed"], "created": self.attrs["created"],
        }


def _run_attrs(group, path, where) -> dict:
    out: dict[str, Any] = {}
    a = group.attrs
    for key in JSON_ATTRS:
        raw = a.get(key)
        if raw is None:
            if key == "schedule":
                raise TrajectoryError(f"{where}no `schedule` attribute", path)
            out[key] = {}
            continue
        text = str_attr(raw)
        if text is None:
            raise TrajectoryError(f"{where}attribute `{key}` must be a JSON string", path)
        try:
            val = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise TrajectoryError(f"{where}attribute `{key}` is not valid JSON ({e})", path) from e
        if not isinstance(val, dict):
            raise TrajectoryError(f"{where}attribute `{key}` must be a JSON object, got "
                                  f"{type(val).__name__}", path)
        out[key] = val
    _check_schedule(out["schedule"], path, where)
    seed = a.get("seed")
    out["seed"] = None if seed is None else scalar_int(seed)
    if seed is not None and out["seed"] is None:
        raise TrajectoryError(f"{where}attribute `seed` must be an integer", path)
    created = a.get("created")
    out["created"] = None if created is None else str_attr(created)
    if created is not None and out["created"] is None:
        raise TrajectoryError(f"{where}attribute `created` must be a string", path)
    out["complete"] = _read_complete(a.get("complete"), path, where)
    return out


def _check_schedule(spec: dict, path, where) -> None:
    try:
        get_schedule(spec)
    except NoiseshiftError as e:
        raise TrajectoryError(f"{where}attribute `schedule`: {e.problem}", path) from e
    except Exception as e:  # a schedule's constructor fed odd parameter values
        raise TrajectoryError(f"{where}attribute `schedule` has bad parameters ({e})",
                              path) from e


def _read_complete(v, path, where) -> bool:
    if v is None:
        raise TrajectoryError(f"{where}no `complete` attribute", path)
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.reshape(())[()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise TrajectoryError(f"{where}attribute `complete` must be a boolean", path)


def _read_t(group, path, where) -> np.ndarray:
    ds = member(group, "t", path, where)
    if ds is None:
        raise TrajectoryError(f"{where}no `t` dataset", path)
    if ds.ndim != 1 or ds.dtype.kind != "f":
        raise TrajectoryError(f"{where}t must be a 1-D float array, got {ds.dtype} "
                              f"{ds.shape}", path)
    t = np.asarray(ds[()], dtype=np.float64)
    if t.size == 0:
        raise TrajectoryError(f"{where}t is empty: no recorded steps", path)
    if not np.isfinite(t).all():
        raise TrajectoryError(f"{where}t contains NaN or Inf", path)
    if t.min() < 0.0 or t.max() > 1.0:
        raise TrajectoryError(f"{where}t outside [0, 1] (from {t.min():.4g} to {t.max():.4g}); "
                              f"t = 0 is data and t = 1 is noise", path)
    bad = np.flatnonzero(np.diff(t) >= 0)
    if bad.size:
        i = int(bad[0])
        raise TrajectoryError(f"{where}t is not decreasing (t[{i}] = {t[i]:.6g}, t[{i + 1}] = "
                              f"{t[i + 1]:.6g}); sampling runs from t = 1 to t = 0", path)
    return t


def _check_states(st, num_steps, complete, path, where) -> tuple[int, tuple[int, ...]]:
    if st.dtype.kind != "f":
        raise TrajectoryError(f"{where}states have dtype {st.dtype}; expected float32", path)
    if st.ndim < 3:
        raise TrajectoryError(f"{where}states must have shape (steps, N, *shape), got "
                              f"{st.shape}", path)
    if st.shape[1] == 0:
        raise TrajectoryError(f"{where}zero samples (states have shape {st.shape})", path)
    if min(st.shape[2:]) == 0:
        raise TrajectoryError(f"{where}empty state shape {st.shape[2:]}", path)
    _check_rows(st.shape[0], "states", num_steps, complete, path, where)
    return int(st.shape[1]), tuple(int(s) for s in st.shape[2:])


def _check_rows(rows, what, num_steps, complete, path, where) -> None:
    # A run being recorded reserves rows ahead of t; a finished run has exactly one per t.
    if rows < num_steps or (complete and rows != num_steps):
        raise TrajectoryError(f"{where}length mismatch: t has {num_steps} steps but {what} "
                              f"has {rows}", path)


def _check_like(ds, st, what, complete, num_steps, path, where) -> None:
    if ds.dtype.kind != "f":
        raise TrajectoryError(f"{where}{what} has dtype {ds.dtype}; expected float32", path)
    if ds.shape[1:] != st.shape[1:]:
        raise TrajectoryError(f"{where}{what} has shape {ds.shape}, states {st.shape}", path)
    _check_rows(ds.shape[0], what, num_steps, complete, path, where)


def _read_labels(group, n, path, where):
    ds = member(group, "labels", path, where)
    if ds is None:
        return None
    if ds.dtype.kind not in "iu" or ds.shape != (n,):
        raise TrajectoryError(f"{where}labels must be ({n},) integers, got {ds.dtype} "
                              f"{ds.shape}", path)
    return np.asarray(ds[()], dtype=np.int64)


def _read_samples_ds(group, run: Run, path, where):
    ds = member(group, "samples", path, where)
    if not run.complete:
        return None  # reserved but not yet written
    if ds is None:
        raise TrajectoryError(f"{where}complete run without `samples`", path)
    if ds.dtype.kind != "f" or ds.shape != (run.n, *run.shape):
        raise TrajectoryError(f"{where}samples must be float ({run.n}, "
                              f"{', '.join(map(str, run.shape))}), got {ds.dtype} {ds.shape}",
                              path)
    return ds


class TrajectoryFile(ReadOnlyFile):
    """An open trajectory file (read-only). Use as a context manager."""

    def __init__(self, path):
        super().__init__(path, FORMAT, VERSION)

    def _read(self) -> None:
        with guard(self.path, "/runs"):
            self.runs: list[str] = list(self._runs.keys())

    def run(self, name: str) -> Run:
        if name not in self.runs:
            raise TrajectoryError(f"no run {name!r} in this file; it has "
                                  f"{', '.join(map(repr, self.runs))}", self.path)
        with guard(self.path, f"run {name!r}"):
            g = member(self._runs, name, self.path, "/runs/", kind=h5py.Group)
        return Run(g, name, self.path)

    def __iter__(self) -> Iterator[Run]:
        return (self.run(name) for name in self.runs)

    def __repr__(self) -> str:
        return f"TrajectoryFile({self.path!r}, runs={self.runs})"


def open_trajectories(path) -> TrajectoryFile:
    """Open a trajectory file read-only; it is never modified."""
    return TrajectoryFile(path)
