"""Writing trajectory files (format v1): `TrajectoryWriter`, a sampler callback that records
every step crash-safely.

The format is specified for outside writers in docs/trajectory-format.md; this module and
`io.trajectories` are the reference implementation.

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
  fsynced and moved into place with an atomic rename (`io.atomic`). A kill before that leaves
  the original file untouched (a new file: nothing at the path), so runs already in the file
  cannot be damaged.
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
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import NoiseshiftError, TrajectoryError
from ..schedules import get_schedule
from .atomic import atomic_path, copy_file, folder_lock
from .h5 import (
    FORMAT,
    VERSION,
    check_root,
    check_run_name,
    dumps,
    guard,
    is_int,
    member,
    open_h5,
    set_str,
    to_numpy,
)

T_CHUNK = 4096  # entries of t per chunk: one chunk covers any usual number of steps

__all__ = ["TrajectoryWriter"]


def _existing_runs(path) -> list[str]:
    """Run names of a file a writer may add to: right format and version, /runs a group
    (possibly empty). The runs themselves are not touched, so they are not checked."""
    with open_h5(path) as f:
        check_root(f, path, FORMAT, VERSION)
        with guard(path, "/runs"):
            g = member(f, "runs", path, "/", kind=h5py.Group)
            return [] if g is None else list(g.keys())


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
        self.run = check_run_name(run)
        self.n = int(n)
        self.shape = tuple(int(s) for s in (shape if np.ndim(shape) else (shape,)))
        if self.n < 1 or not self.shape or min(self.shape) < 1:
            raise NoiseshiftError(f"cannot record n={n} samples of shape {self.shape}")
        sched = get_schedule(schedule).to_dict()
        self._attrs = {"schedule": dumps(sched), "sampler": dumps(sampler),
                       "guidance": dumps(guidance), "model": dumps(model)}
        self.seed = None if seed is None else int(seed)
        self.labels = None if labels is None else to_numpy(labels).astype(np.int64).reshape(-1)
        if self.labels is not None and self.labels.shape != (self.n,):
            raise NoiseshiftError(f"{self.labels.shape[0]} labels for {self.n} samples")
        self.save_x0 = save_x0
        self.overwrite = overwrite
        if steps is None and isinstance(sampler, dict):
            steps = sampler.get("steps")
        self.planned = int(steps) if is_int(steps) and steps > 0 else 1
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
        a = np.asarray(to_numpy(a), dtype=np.float32)
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
        with folder_lock(p.parent):
            existing = p.exists()
            if existing:
                self._precheck()  # another writer may have added the run meanwhile
            f = None
            try:
                with atomic_path(p, "partial", replace=existing) as tmp:
                    if existing:
                        copy_file(p, tmp)
                    f = h5py.File(tmp, "r+" if existing else "w")
                    self._build(f, t, x, x0)
                    f.flush()
            except BaseException as e:
                if f is not None:
                    f.close()
                if isinstance(e, FileExistsError):
                    raise TrajectoryError("the file appeared while recording started (another "
                                          "process?); not overwriting it", p) from None
                raise
        self._f = f

    def _build(self, f: h5py.File, t, x, x0) -> None:
        if "runs" not in f:
            set_str(f, "format", FORMAT)
            f.attrs["version"] = np.int64(VERSION)
            set_str(f, "writer", f"noiseshift {__version__}")
            f.create_group("runs")
        runs = f["runs"]
        if self.run in runs:
            del runs[self.run]
        g = runs.create_group(self.run)
        for key, text in self._attrs.items():
            set_str(g, key, text)
        if self.seed is not None:
            g.attrs["seed"] = np.int64(self.seed)
        set_str(g, "created", datetime.now(timezone.utc).isoformat(timespec="microseconds"))
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

    def attach(self, name: str, data) -> None:
        """Add an optional dataset to the run (after the first step, before `finish`): e.g.
        ``all_samples`` and ``all_labels`` when only some samples are recorded. Readers of
        format v1 ignore datasets they do not know."""
        if self._g is None or self.complete:
            raise NoiseshiftError("attach() needs a recorded step and an unfinished run")
        if name in ("t", "states", "x0_pred", "labels", "samples"):
            raise NoiseshiftError(f"{name!r} is a format-v1 dataset; the writer writes it")
        a = np.asarray(to_numpy(data))
        self._g.create_dataset(name, data=a.astype(np.float32 if a.dtype.kind == "f" else
                                                   np.int64))
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
