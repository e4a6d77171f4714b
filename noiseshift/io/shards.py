"""Shards of one run, written by the ranks of a torchrun job, and their merge into one
format-v1 run.

Each rank records its samples into a hidden shard file beside the final file (a complete
run written by the crash-safe `TrajectoryWriter`) and saves its final samples beside it.
After a barrier, rank 0 replays the shards step by step into a `TrajectoryWriter` on the
final path, so the merged run gets exactly the writer's guarantees: its structure appears
at the final path by an atomic rename, every later step is committed, and ``complete`` is
set last. A crash before the merge leaves the final path untouched; a crash during it
leaves a run that says ``complete = False`` (what tests/test_kill.py promises of any
writer). The shard files are removed after the merge, and by every rank on the way out.

A rank killed outright (SIGKILL, out of memory) cannot remove its own: its shard names carry
the host and process id (``.NAME.<hex>.rank<r>.<host>-<pid>.shard.h5``), and the next run
with the same output removes those whose process is gone from this host (`stale_shards`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

import numpy as np

from ..errors import TrajectoryError
from .atomic import install, sibling_temp
from .trajectories import open_trajectories
from .writer import TrajectoryWriter

__all__ = ["merge_shards", "new_shard_path", "read_samples_shard", "remove_shards",
           "save_samples_shard", "stale_shards"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_shards(path) -> list[Path]:
    """Shard files beside ``path`` (and the temporary files beside them) left by ranks of
    an earlier run on this host whose process no longer exists."""
    path = Path(path)
    tag = re.compile(r"\.rank\d+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.")
    out = []
    for p in path.parent.glob(f".*{path.name}.*.rank*"):
        m = tag.search(p.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            out.append(p)
    return sorted(out)


def new_shard_path(path, rank: int, what: str = "shard.h5") -> Path:
    """A fresh hidden name beside ``path`` for rank ``rank``'s shard (nothing there yet),
    tagged with this host and process; stale shards of dead processes go first."""
    remove_shards(stale_shards(path))
    tmp = sibling_temp(path, f"rank{rank}.{_HOST}-{os.getpid()}.{what}")
    tmp.unlink()
    return tmp


def save_samples_shard(path, samples: np.ndarray) -> None:
    """Write a rank's final samples (float32) to ``path`` (.npy), atomically."""
    tmp = sibling_temp(path, "part")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(samples, dtype=np.float32))
        install(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_samples_shard(path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def remove_shards(paths) -> None:
    for p in paths:
        if p is not None:
            with contextlib.suppress(OSError):
                Path(p).unlink()


def merge_shards(shards: list, path, run: str, *, writer: dict, samples: np.ndarray,
                 extra: dict | None = None) -> None:
    """Replay the runs ``run`` of the shard files ``shards`` (rank order; None for a rank
    that recorded nothing) into run ``run`` of ``path``: states and x0_pred joined along the
    samples, step by step. ``writer`` are the `TrajectoryWriter` keywords (n = the recorded
    samples of all shards; labels for them), ``samples`` the recorded samples' final
    outputs, ``extra`` optional datasets to attach (e.g. all_samples)."""
    files = [open_trajectories(p) for p in shards if p is not None]
    try:
        runs = [f.run(run) for f in files]
        if not runs or any(not r.complete for r in runs):
            raise TrajectoryError(f"a shard of run {run!r} is missing or incomplete", path)
        t = runs[0].t
        if any(not np.array_equal(r.t, t) for r in runs):
            raise TrajectoryError(f"the shards of run {run!r} recorded different steps", path)
        has_x0 = all(r.x0_pred is not None for r in runs)
        with TrajectoryWriter(path, run, **{**writer, "steps": len(t)}) as w:
            for k, tk in enumerate(t):
                x = np.concatenate([r.states[k] for r in runs])
                x0 = np.concatenate([r.x0_pred[k] for r in runs]) if has_x0 else None
                w.callback({"i": k, "t": float(tk), "x": x, "x0_pred": x0})
            for name, data in (extra or {}).items():
                w.attach(name, data)
            w.finish(samples)
    finally:
        for f in files:
            with contextlib.suppress(Exception):
                f.close()
