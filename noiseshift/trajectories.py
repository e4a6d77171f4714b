"""HDF5 trajectory files (format v1) and estimates files: streaming writer, reader, validator.

The format is specified for outside writers in docs/trajectory-format.md; this module is the
reference implementation.

Crash safety (why the writer looks the way it does)
---------------------------------------------------
HDF5 is not journaled: a process killed inside a flush can leave metadata that points at
blocks beyond the end of the file ("addr overflow") or at B-tree nodes not yet written. The
writer never lets a kill reach a structure that matters:

* Files are written in the classic format (superblock v0, h5py's default ``libver``). The
  1.10+ format with SWMR keeps the file readable too, but a killed writer leaves consistency
  flags that make plain ``h5py.File(path, "r")`` refuse the file until ``h5clear`` is run.
* A run's structure (groups, attributes, datasets with every step's chunk allocated up front,
  and the first step) is built in a temporary copy of the file in the same folder, flushed,
  and moved into place with an atomic rename. A kill before that leaves the original file
  untouched (a new file: nothing at the path), so runs already in the file cannot be damaged.
* After that, recording step k writes the state rows into their pre-allocated chunks (raw
  data only, no metadata changes), flushes, then grows ``t`` by one (one object-header
  write) and flushes again. ``len(t)`` is the commit count: a state row is only ever counted
  once it and the metadata locating it are on disk. When the number of steps is known up
  front (``steps=`` or ``sampler["steps"]``) no chunk index or allocation changes at all while
  steps are recorded; steps beyond it get rows allocated as they come, still committed by
  the same two flushes.
* ``samples`` is written, then ``complete`` is set to True in place, then flushed.

So a SIGKILL at any moment leaves a file that opens with plain h5py, holds every committed step
bit for bit, and says ``complete = False``. States pre-allocated for steps not yet recorded
read as rows past ``len(t)``; the reader never shows them (`Run.states` has ``len(t)`` rows).
tests/test_kill.py kills real writers at random points to check this.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import NoiseshiftError, TrajectoryError

FORMAT = "noiseshift.trajectories"
VERSION = 1
ESTIMATES_FORMAT = "noiseshift.estimates"
ESTIMATES_VERSION = 1

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
T_CHUNK = 4096  # entries of t per chunk: one chunk covers any usual number of steps
DEFAULT_MAX_BYTES = 64 * 2**20
JSON_ATTRS = ("schedule", "sampler", "guidance", "model")

# What h5py raises on a damaged or odd file; all of it becomes a TrajectoryError.
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
              AttributeError, NotImplementedError, OverflowError, RecursionError,
              UnicodeDecodeError, MemoryError)

__all__ = [
    "ESTIMATES_FORMAT", "ESTIMATES_VERSION", "FORMAT", "VERSION", "EstimatesFile",
    "EstimatesWriter", "Run", "Steps", "TrajectoryFile", "TrajectoryWriter",
    "estimates_path", "open_estimates", "open_trajectories", "validate", "write_estimates",
]


# -- small helpers --------------------------------------------------------------------------

@contextlib.contextmanager
def _guard(path, what: str):
    """Turn whatever h5py raises while reading `what` into a one-line TrajectoryError."""
    try:
        yield
    except NoiseshiftError:
        raise
    except _H5_ERRORS as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise TrajectoryError(f"cannot read {what} ({msg})", path) from e


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _dumps(obj) -> str:
    if obj is None:
        obj = {}
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if not isinstance(obj, dict):
        raise TypeError(f"expected a dict, got {type(obj).__name__}")
    return json.dumps(obj, sort_keys=True, default=_json_default)


def _set_str(obj, key: str, text: str) -> None:
    """A fixed-length UTF-8 string attribute. Variable-length strings live in HDF5's global
    heap, and a damaged heap can hang or crash the HDF5 library itself (3000 random byte
    flips: 9 hangs or segfaults with variable-length attributes, none with fixed-length)."""
    raw = text.encode("utf-8")
    obj.attrs.create(key, np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw)))))


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on the GPU
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _str_attr(v) -> str | None:
    """An HDF5 string attribute as str (h5py gives str, bytes or a 0-d array)."""
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, str):
        return v
    return None


def _scalar_int(v) -> int | None:
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.reshape(())[()]
    return int(v) if _is_int(v) else None


def _member(group, name: str, path, where: str, kind=h5py.Dataset):
    """group[name] if it is a plain (hard-linked, local) object of the given kind, else None.

    Soft and external links are refused before they are followed: a trajectory file never
    makes noiseshift read another file.
    """
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        kind_ = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(
            type(link), "a link")
        raise TrajectoryError(f"{where}{name} is {kind_}; noiseshift reads plain datasets "
                              f"only", path)
    obj = group[name]
    if not isinstance(obj, kind):
        want = "dataset" if kind is h5py.Dataset else "group"
        raise TrajectoryError(f"{where}{name} is not a {want}", path)
    if kind is h5py.Dataset and (obj.is_virtual or obj.external):
        raise TrajectoryError(f"{where}{name} keeps its data in other files; not allowed", path)
    return obj


def _fsize(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _open_h5(path) -> h5py.File:
    """Open an HDF5 file read-only, with a clear problem for anything that is not one.

    File locking is off so that a file another process is still recording can be inspected;
    the writer keeps the on-disk state consistent at every flush (see the module docstring).
    """
    p = Path(path)
    if not p.exists():
        raise TrajectoryError("no such file", path)
    if p.is_dir():
        raise TrajectoryError("is a folder, not a file", path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            found = _find_signature(fh, size)
    except OSError as e:
        raise TrajectoryError(f"cannot read file ({e.strerror or e})", path) from e
    if size == 0:
        raise TrajectoryError("file is empty (0 bytes)", path)
    if not found:
        raise TrajectoryError("not an HDF5 file (no HDF5 signature)", path)
    try:
        return h5py.File(p, "r", locking=False)
    except _H5_ERRORS as e:
        msg = " ".join(str(e).split())
        if "truncated file" in msg:
            raise TrajectoryError(
                f"HDF5 file is truncated ({_fsize(size)} on disk, cut short by a copy or a "
                f"disk filling up)", path) from e
        raise TrajectoryError(f"damaged HDF5 file, cannot open it ({msg})", path) from e


def _find_signature(fh, size: int) -> bool:
    """HDF5's signature sits at byte 0, 512, 1024, 2048, ... (after an optional user block)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        fh.seek(offset)
        if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def _check_root(f: h5py.File, path, want: str, version: int) -> None:
    with _guard(path, "the root attributes"):
        fmt = _str_attr(f.attrs.get("format"))
        ver = f.attrs.get("version")
    if fmt is None:
        raise TrajectoryError(f"not a noiseshift file (`format` attribute missing or not a "
                              f"string; expected {want!r})", path)
    if fmt != want:
        if fmt == ESTIMATES_FORMAT:
            raise TrajectoryError("this is a noiseshift estimates file, not a trajectory "
                                  "file; pass the trajectory file it was made from", path)
        if fmt == FORMAT:
            raise TrajectoryError("this is a noiseshift trajectory file, not an estimates "
                                  "file", path)
        raise TrajectoryError(f"wrong format {fmt[:60]!r}; expected {want!r}", path)
    v = _scalar_int(ver)
    if v is None:
        raise TrajectoryError(f"`version` attribute must be an integer, got {ver!r:.40}", path)
    if v > version:
        raise TrajectoryError(f"format version {v} is newer than this noiseshift supports "
                              f"({version}); upgrade noiseshift", path)
    if v < 1:
        raise TrajectoryError(f"bad format version {v}", path)


def _runs_group(f: h5py.File, path, what: str = "runs") -> h5py.Group:
    with _guard(path, "/runs"):
        g = _member(f, "runs", path, "/", kind=h5py.Group)
        if g is None:
            raise TrajectoryError(f"no /runs group: the file holds no {what}", path)
        if len(g) == 0:
            raise TrajectoryError(f"/runs is empty: the file holds no {what}", path)
        return g


# -- reading trajectories --------------------------------------------------------------------

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
        with _guard(self._path, self._what):
            return self.dataset[(first, *key[1:])]

    def _rows(self, k):
        s = self.num_steps
        if isinstance(k, slice):
            return slice(*k.indices(s))
        if _is_int(k):
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
        with _guard(path, f"run {name!r}"):
            self.attrs = _run_attrs(group, path, where)
            self.complete: bool = self.attrs["complete"]
            self.t = _read_t(group, path, where)
            self.num_steps = len(self.t)
            st = _member(group, "states", path, where)
            if st is None:
                raise TrajectoryError(f"{where}no `states` dataset", path)
            self.n, self.shape = _check_states(st, self.num_steps, self.complete, path, where)
            self.states = Steps(st, self.num_steps, path, f"run {name!r} states")
            x0 = _member(group, "x0_pred", path, where)
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
        from .schedules import get_schedule

        return get_schedule(self.attrs["schedule"])

    @property
    def row_bytes(self) -> int:
        """Bytes of one state (one sample at one step) as float32."""
        return 4 * math.prod(self.shape)

    def iter_chunks(self, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "states"
                    ) -> Iterator[tuple[int, slice, np.ndarray]]:
        """Stream `states` (or `x0_pred`) as (step index, sample slice, float32 block).

        Each block holds at most `max_bytes` (at least one sample), so memory stays flat
        however large the file. Blocks are checked for NaN and Inf as they stream by.
        """
        steps = self.states if what == "states" else self.x0_pred
        if steps is None:
            raise TrajectoryError(f"{self._where}no `{what}` dataset", self.path)
        per = max(1, int(max_bytes) // self.row_bytes)
        for i in range(self.num_steps):
            for lo in range(0, self.n, per):
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
                with _guard(self.path, f"run {self.name!r} samples"):
                    block = self.samples[lo:lo + per]
                if not np.isfinite(block).all():
                    raise TrajectoryError(f"{self._where}samples contain NaN or Inf", self.path)

    def read_samples(self) -> np.ndarray | None:
        """The final samples as float32, checked for NaN and Inf (None for an incomplete
        run)."""
        if self.samples is None:
            return None
        with _guard(self.path, f"run {self.name!r} samples"):
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
            with _guard(self.path, f"run {self.name!r} samples"):
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
        text = _str_attr(raw)
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
    out["seed"] = None if seed is None else _scalar_int(seed)
    if seed is not None and out["seed"] is None:
        raise TrajectoryError(f"{where}attribute `seed` must be an integer", path)
    created = a.get("created")
    out["created"] = None if created is None else _str_attr(created)
    if created is not None and out["created"] is None:
        raise TrajectoryError(f"{where}attribute `created` must be a string", path)
    out["complete"] = _read_complete(a.get("complete"), path, where)
    return out


def _check_schedule(spec: dict, path, where) -> None:
    from .schedules import get_schedule

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
    if _is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise TrajectoryError(f"{where}attribute `complete` must be a boolean", path)


def _read_t(group, path, where) -> np.ndarray:
    ds = _member(group, "t", path, where)
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
    ds = _member(group, "labels", path, where)
    if ds is None:
        return None
    if ds.dtype.kind not in "iu" or ds.shape != (n,):
        raise TrajectoryError(f"{where}labels must be ({n},) integers, got {ds.dtype} "
                              f"{ds.shape}", path)
    return np.asarray(ds[()], dtype=np.int64)


def _read_samples_ds(group, run: Run, path, where):
    ds = _member(group, "samples", path, where)
    if not run.complete:
        return None  # reserved but not yet written
    if ds is None:
        raise TrajectoryError(f"{where}complete run without `samples`", path)
    if ds.dtype.kind != "f" or ds.shape != (run.n, *run.shape):
        raise TrajectoryError(f"{where}samples must be float ({run.n}, "
                              f"{', '.join(map(str, run.shape))}), got {ds.dtype} {ds.shape}",
                              path)
    return ds


class TrajectoryFile:
    """An open trajectory file (read-only). Use as a context manager."""

    def __init__(self, path):
        self.path = str(path)
        self._f = _open_h5(path)
        try:
            _check_root(self._f, self.path, FORMAT, VERSION)
            self._runs = _runs_group(self._f, self.path)
            with _guard(self.path, "/runs"):
                self.runs: list[str] = list(self._runs.keys())
        except BaseException:
            self._f.close()
            raise

    def run(self, name: str) -> Run:
        if name not in self.runs:
            raise TrajectoryError(f"no run {name!r} in this file; it has "
                                  f"{', '.join(map(repr, self.runs))}", self.path)
        with _guard(self.path, f"run {name!r}"):
            g = _member(self._runs, name, self.path, "/runs/", kind=h5py.Group)
        return Run(g, name, self.path)

    def __iter__(self) -> Iterator[Run]:
        return (self.run(name) for name in self.runs)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> TrajectoryFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryFile({self.path!r}, runs={self.runs})"


def open_trajectories(path) -> TrajectoryFile:
    """Open a trajectory file read-only; it is never modified."""
    return TrajectoryFile(path)


def file_kind(path) -> str:
    """'trajectories' or 'estimates', from the root `format` attribute."""
    with _open_h5(path) as f, _guard(path, "the root attributes"):
        fmt = _str_attr(f.attrs.get("format"))
    if fmt == ESTIMATES_FORMAT:
        return "estimates"
    return "trajectories"


def validate(path, scan: bool = True,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Check a trajectory (or estimates) file against format v1 and summarise it.

    Raises TrajectoryError on the first problem. An incomplete run (recording stopped before
    `finish`) is valid and flagged with ``complete: False``. With `scan`, every recorded
    array is streamed through a NaN/Inf check; `progress(done, total)` counts steps.
    """
    if file_kind(path) == "estimates":
        return validate_estimates(path)
    with open_trajectories(path) as tf:
        runs = [tf.run(name) for name in tf.runs]
        out = {"path": str(path), "kind": "trajectories", "format": FORMAT, "version": VERSION,
               "valid": True, "scanned": scan, "runs": [r.summary() for r in runs]}
        if scan:
            total = sum(r.num_steps * (1 + (r.x0_pred is not None)) for r in runs)
            done = [0]

            def tick(k):
                done[0] += k
                if progress is not None:
                    progress(done[0], total)

            for r in runs:
                r.check_finite(progress=tick)
    return out


# -- writing trajectories --------------------------------------------------------------------

def _existing_runs(path) -> list[str]:
    """Run names of a file a writer may add to: right format and version, /runs a group
    (possibly empty). The runs themselves are not touched, so they are not checked."""
    with _open_h5(path) as f:
        _check_root(f, path, FORMAT, VERSION)
        with _guard(path, "/runs"):
            g = _member(f, "runs", path, "/", kind=h5py.Group)
            return [] if g is None else list(g.keys())


def _check_run_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or name != name.strip():
        raise NoiseshiftError(f"bad run name {name!r}: use a non-empty name without '/'")
    return name


def _sibling_temp(path: Path, tag: str) -> Path:
    """A new empty hidden file beside `path` (same file system, so a rename is atomic),
    created with the usual permissions (the umask applies, unlike mkstemp's 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Serialise writers that replace files in one folder (best effort: some network file
    systems have no flock)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _refuse_if_being_written(path: Path) -> None:
    """HDF5 writers hold an exclusive flock on their file; readers a shared one."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise TrajectoryError(f"cannot read file ({e.strerror})", path) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TrajectoryError("another process is writing this file (a sampler still "
                              "recording?); wait for it or record to another file",
                              path) from None
    except OSError:
        pass  # no flock on this file system
    finally:
        os.close(fd)


class TrajectoryWriter:
    """Record a sampler's trajectory into run `run` of the HDF5 file `path`, step by step.

        with TrajectoryWriter("traj.h5", "baseline", n=N, shape=(256,), schedule=sched,
                              sampler={"name": "euler", "steps": 32}, seed=0) as w:
            samples = sample_euler(model, x, ts, callback=w.callback)
            w.finish(samples)

    A new file is created; an existing trajectory file gets the run added, its other runs
    untouched. A run of the same name is replaced with ``overwrite=True`` and refused
    otherwise. Nothing is written until the first step arrives; from then on each step is on
    disk before the sampler continues, and a crash or kill leaves a valid file whose run says
    ``complete = False``. `steps` (default: ``sampler["steps"]``) reserves room for that many
    steps up front, which keeps every later write to raw data only (see the module docstring);
    more steps than that still work.
    """

    def __init__(self, path, run: str, *, n: int, shape, schedule, sampler=None,
                 guidance=None, model=None, seed: int | None = None, labels=None,
                 save_x0: bool = True, overwrite: bool = False, steps: int | None = None):
        self.path = Path(path)
        self.run = _check_run_name(run)
        self.n = int(n)
        self.shape = tuple(int(s) for s in (shape if np.ndim(shape) else (shape,)))
        if self.n < 1 or not self.shape or min(self.shape) < 1:
            raise NoiseshiftError(f"cannot record n={n} samples of shape {self.shape}")
        from .schedules import get_schedule

        sched = get_schedule(schedule).to_dict()
        self._attrs = {"schedule": _dumps(sched), "sampler": _dumps(sampler),
                       "guidance": _dumps(guidance), "model": _dumps(model)}
        self.seed = None if seed is None else int(seed)
        self.labels = None if labels is None else _to_numpy(labels).astype(np.int64).reshape(-1)
        if self.labels is not None and self.labels.shape != (self.n,):
            raise NoiseshiftError(f"{self.labels.shape[0]} labels for {self.n} samples")
        self.save_x0 = save_x0
        self.overwrite = overwrite
        if steps is None and isinstance(sampler, dict):
            steps = sampler.get("steps")
        self.planned = int(steps) if _is_int(steps) and steps > 0 else 1
        self.num_steps = 0
        self.complete = False
        self._f: h5py.File | None = None
        self._g: h5py.Group | None = None
        self._ds: dict[str, h5py.Dataset] = {}
        self._last_t = math.inf
        self._has_x0: bool | None = None
        self._precheck()

    # -- checks before any sampling starts -------------------------------------------------
    def _precheck(self) -> None:
        p = self.path
        if not p.parent.is_dir():
            raise TrajectoryError(f"folder {str(p.parent)!r} does not exist", p)
        if not p.exists():
            return
        if p.is_dir():
            raise TrajectoryError("is a folder, not a file", p)
        try:
            exists = self.run in _existing_runs(p)
        except TrajectoryError as e:
            raise TrajectoryError(f"exists and is not a valid trajectory file, so noiseshift "
                                  f"will not write to it ({e.problem})", p) from None
        if exists and not self.overwrite:
            raise TrajectoryError(f"run {self.run!r} already exists; choose another run name "
                                  f"or replace it (overwrite=True)", p)
        _refuse_if_being_written(p)

    # -- the sampler callback --------------------------------------------------------------
    def callback(self, info: dict) -> None:
        """Append one step: info = {"i", "t", "x" (N, *shape), "x0_pred" (or None)}."""
        if self.complete:
            raise NoiseshiftError("this run is finished; open a new TrajectoryWriter")
        t, x, x0 = self._check_step(info)
        if self._f is None:
            self._create(t, x, x0)
        else:
            self._append(t, x, x0)
        self.num_steps += 1
        self._last_t = t

    __call__ = callback

    def _check_step(self, info):
        t = float(info["t"])
        i = info.get("i", self.num_steps)
        if not (0.0 <= t <= 1.0) or not t < self._last_t:
            raise TrajectoryError(f"step {i}: t = {t} must lie in [0, 1] and be below the "
                                  f"previous step's t = {self._last_t}", self.path)
        x = self._array(info["x"], f"step {i}: state")
        x0 = info.get("x0_pred") if self.save_x0 else None
        if self._has_x0 is None:
            self._has_x0 = x0 is not None
        elif self._has_x0 != (x0 is not None):
            raise NoiseshiftError(f"step {i}: x0_pred given on some steps but not others")
        return t, x, None if x0 is None else self._array(x0, f"step {i}: x0_pred")

    def _array(self, a, what: str) -> np.ndarray:
        a = np.asarray(_to_numpy(a), dtype=np.float32)
        if a.shape != (self.n, *self.shape):
            raise NoiseshiftError(f"{what} has shape {a.shape}; the writer was opened for "
                                  f"{(self.n, *self.shape)}")
        if not np.isfinite(a).all():
            raise TrajectoryError(f"{what} holds NaN or Inf (the sampler diverged); the steps "
                                  f"before it are kept and the run stays incomplete", self.path)
        return a

    # -- structure: built in a temporary copy, moved into place atomically ---------------------
    def _create(self, t: float, x: np.ndarray, x0: np.ndarray | None) -> None:
        # A symlinked path: replace the file it points to, not the link.
        p = self.path.resolve() if self.path.is_symlink() else self.path
        with _folder_lock(p.parent):
            existing = p.exists()
            if existing:
                self._precheck()  # another writer may have added the run meanwhile
            tmp = _sibling_temp(p, "partial")
            try:
                if existing:
                    _copy_file(p, tmp)
                f = h5py.File(tmp, "r+" if existing else "w")
                try:
                    self._build(f, t, x, x0)
                    f.flush()
                    _install(tmp, p, replace=existing)
                except BaseException:
                    f.close()
                    raise
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        self._f = f

    def _build(self, f: h5py.File, t, x, x0) -> None:
        if "runs" not in f:
            _set_str(f, "format", FORMAT)
            f.attrs["version"] = np.int64(VERSION)
            from . import __version__

            _set_str(f, "writer", f"noiseshift {__version__}")
            f.create_group("runs")
        runs = f["runs"]
        if self.run in runs:
            del runs[self.run]
        g = runs.create_group(self.run)
        for key, text in self._attrs.items():
            _set_str(g, key, text)
        if self.seed is not None:
            g.attrs["seed"] = np.int64(self.seed)
        _set_str(g, "created", datetime.now(timezone.utc).isoformat(timespec="microseconds"))
        g.attrs["complete"] = np.bool_(False)
        ds = self._ds
        ds["t"] = g.create_dataset("t", shape=(1,), maxshape=(None,), dtype="f8",
                                   chunks=(max(T_CHUNK, self.planned),), fillvalue=np.nan,
                                   data=np.array([t]))
        rows = (self.planned, self.n, *self.shape)
        for name, a in (("states", x), ("x0_pred", x0)):
            if a is not None:
                ds[name] = _reserve(g, name, rows, growable=True)
                ds[name][0] = a
        if self.labels is not None:
            g.create_dataset("labels", data=self.labels, dtype="i8")
        ds["samples"] = _reserve(g, "samples", (self.n, *self.shape), growable=False)
        self._g = g

    # -- one step: raw data into reserved chunks, then the commit count --------------------
    def _append(self, t: float, x: np.ndarray, x0: np.ndarray | None) -> None:
        ds, k = self._ds, self.num_steps
        rows = [ds["states"]] + ([ds["x0_pred"]] if x0 is not None else [])
        if rows[0].shape[0] <= k:  # more steps than reserved: grow (allocates)
            for d in rows:
                d.resize(k + 1, axis=0)
        ds["states"][k] = x
        if x0 is not None:
            ds["x0_pred"][k] = x0
        self._f.flush()
        ds["t"].resize((k + 1,))
        ds["t"][k] = t
        self._f.flush()

    def finish(self, samples) -> None:
        """Write the final samples and mark the run complete (set last, then flushed)."""
        if self._f is None:
            raise TrajectoryError("no steps were recorded; pass w.callback to the sampler",
                                  self.path)
        s = self._array(samples, "samples")
        ds = self._ds
        ds["samples"][...] = s
        self._f.flush()
        for name in ("states", "x0_pred"):
            if name in ds and ds[name].shape[0] != self.num_steps:  # fewer than reserved
                ds[name].resize(self.num_steps, axis=0)
        self._f.flush()
        self._g.attrs.modify("complete", np.bool_(True))
        self._f.flush()
        self.complete = True

    def close(self) -> None:
        """Close the file; a run not finished stays ``complete = False``."""
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reserve(group, name: str, shape, growable: bool) -> h5py.Dataset:
    """A float32 dataset with every chunk allocated now (and left unfilled), so later writes
    touch raw data only. Rows are chunked one step at a time."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    kw = {"chunks": (1, *shape[1:]), "maxshape": (None, *shape[1:])} if growable else {}
    return group.create_dataset(name, shape=shape, dtype="f4", dcpl=dcpl, **kw)


def _copy_file(src: Path, dst: Path) -> None:
    import shutil

    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


def _install(tmp: Path, final: Path, replace: bool) -> None:
    """Move a finished temporary file to its final name atomically."""
    if replace:
        os.replace(tmp, final)
        return
    try:  # link() refuses to clobber a file another process created meanwhile
        os.link(tmp, final)
    except FileExistsError:
        raise TrajectoryError("the file appeared while recording started (another "
                              "process?); not overwriting it", final) from None
    except OSError:
        os.replace(tmp, final)  # no hard links on this file system
        return
    tmp.unlink()


# -- estimates files -------------------------------------------------------------------------

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
        self._tmp = _sibling_temp(self.path, "partial")
        self._f = h5py.File(self._tmp, "w")
        _set_str(self._f, "format", ESTIMATES_FORMAT)
        self._f.attrs["version"] = np.int64(ESTIMATES_VERSION)
        _set_str(self._f, "source", str(self.source))
        self._f.create_group("runs")
        return self

    def _run_group(self, run: str) -> h5py.Group:
        if run not in self._meta:
            r = self._src.run(run)
            self._meta[run] = r
            g = self._f["runs"].create_group(run)
            _set_str(g, "fingerprint", r.fingerprint())
            g.create_dataset("t", data=r.t, dtype="f8")
        return self._f["runs"][run]

    def add_estimator(self, run: str, name: str, *, estimator: dict, calibration: dict | None,
                      reference) -> None:
        """Start estimator `name`'s readings for `run`: its identity, calibration, and its
        reading of true x_t at each recorded t (`reference`, (S,))."""
        _check_run_name(name)
        g = self._run_group(run)
        r = self._meta[run]
        ref = np.asarray(_to_numpy(reference), dtype=np.float64).reshape(-1)
        if ref.shape != (r.num_steps,):
            raise ValueError(f"reference has shape {ref.shape}; run {run!r} has "
                             f"{r.num_steps} steps")
        e = g.create_group(name)
        _set_str(e, "estimator", _dumps(estimator))
        _set_str(e, "calibration", _dumps(calibration))
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
        th = np.asarray(_to_numpy(t_hat), dtype=np.float32).reshape(-1)
        ts = np.asarray(_to_numpy(t_std), dtype=np.float32).reshape(-1)
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
        os.replace(self._tmp, self.path)
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
            th, ts = np.asarray(_to_numpy(en["t_hat"])), np.asarray(_to_numpy(en["t_std"]))
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
            raw = _str_attr(group.attrs.get(key, "{}"))
            try:
                val = json.loads(raw) if raw is not None else None
            except (ValueError, RecursionError):
                val = None
            if not isinstance(val, dict):
                raise TrajectoryError(f"{where}attribute `{key}` must be a JSON object", path)
            setattr(self, key, val)
        for key, dims in (("t_hat", 2), ("t_std", 2), ("reference", 1)):
            ds = _member(group, key, path, where)
            want = (self.num_steps, n)[:dims]
            if ds is None:
                raise TrajectoryError(f"{where}no `{key}` dataset", path)
            if ds.dtype.kind != "f" or ds.shape != want:
                raise TrajectoryError(f"{where}{key} must be float {want}, got {ds.dtype} "
                                      f"{ds.shape}", path)
        self._cache: dict[str, np.ndarray] = {}

    def _get(self, key: str) -> np.ndarray:
        if key not in self._cache:
            with _guard(self.path, f"run {self.run!r} estimator {self.name!r} {key}"):
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


class EstimatesFile:
    """An open estimates file (read-only). Use as a context manager."""

    def __init__(self, path):
        self.path = str(path)
        self._f = _open_h5(path)
        try:
            _check_root(self._f, self.path, ESTIMATES_FORMAT, ESTIMATES_VERSION)
            self._runs = _runs_group(self._f, self.path, "estimates")
            with _guard(self.path, "the estimates file"):
                self.source = _str_attr(self._f.attrs.get("source")) or ""
                self.runs: list[str] = list(self._runs.keys())
                self._t = {r: self._run_t(r) for r in self.runs}
        except BaseException:
            self._f.close()
            raise

    def _run_t(self, run: str) -> np.ndarray:
        g = _member(self._runs, run, self.path, "/runs/", kind=h5py.Group)
        ds = _member(g, "t", self.path, f"run {run!r}: ")
        if ds is None or ds.ndim != 1 or ds.dtype.kind != "f" or ds.shape[0] == 0:
            raise TrajectoryError(f"run {run!r}: missing or bad `t`", self.path)
        if _str_attr(g.attrs.get("fingerprint")) is None:
            raise TrajectoryError(f"run {run!r}: no `fingerprint` attribute", self.path)
        return np.asarray(ds[()], dtype=np.float64)

    def estimators(self, run: str) -> list[str]:
        self._check_run(run)
        with _guard(self.path, f"run {run!r}"):
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
        with _guard(self.path, f"run {run!r} estimator {estimator!r}"):
            g = self._runs[run][estimator]
            t_hat = g.get("t_hat")
            n = int(t_hat.shape[1]) if isinstance(t_hat, h5py.Dataset) and t_hat.ndim == 2 \
                else 0
            return Estimates(g, run, estimator, self._t[run], n, self.path)

    def fingerprint(self, run: str) -> str:
        self._check_run(run)
        with _guard(self.path, f"run {run!r}"):
            return _str_attr(self._runs[run].attrs["fingerprint"])

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

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> EstimatesFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_estimates(path) -> EstimatesFile:
    """Open an estimates file read-only."""
    return EstimatesFile(path)


def validate_estimates(path) -> dict:
    """Check an estimates file (structure and values) and summarise it."""
    with open_estimates(path) as ef:
        return ef.summary()
