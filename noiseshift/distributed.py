"""Running under torchrun: rank and world size from the environment, the process group, and
the few collectives the library needs (shards of indices, gather to rank 0, broadcast).

Without torchrun (no ``WORLD_SIZE`` in the environment, or 1) every helper is the
single-process identity: `world()` is (0, 1), `shard` returns everything, `gather` returns
``[obj]``, `barrier` does nothing. So library code calls these unconditionally.

    torchrun --nproc-per-node 2 -m noiseshift sample --n 512 --record traj.h5

The backend is NCCL when the device is CUDA (each process on ``cuda:LOCAL_RANK``) and gloo on
the CPU. Object collectives (`gather`, `broadcast`) go through gloo-compatible pickling, so
they work on either backend.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .runtime import resolve_device

if TYPE_CHECKING:
    import torch


def _dist():
    """torch.distributed, imported on first use: the CLI's entry point calls `launched` and
    `destroy` on every command, `--help` included, which loads no torch."""
    import torch.distributed as dist

    return dist


def env_world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) without torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return env_world()[2] > 1


def active() -> bool:
    """Whether a process group is up with more than one process (and not set aside by
    `alone`)."""
    return not _ALONE and _initialized() and _dist().get_world_size() > 1


_ALONE: list = []


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within it every rank works as a single process: a small job each rank does whole
    (the do-no-harm pilot) gives every rank the same answer without any of them talking."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def _initialized() -> bool:
    # Without torch loaded no process group can be up; asking must not load it.
    return "torch" in sys.modules and _dist().is_available() and _dist().is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    if not active():
        return 0, 1
    return _dist().get_rank(), _dist().get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def device_for(device="auto") -> torch.device:
    """The device of this process: under torchrun with CUDA, cuda:LOCAL_RANK."""
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda" and launched() and dev.index is None:
        dev = torch.device("cuda", env_world()[1])
        torch.cuda.set_device(dev)
    return dev


def init(device="auto") -> torch.device:
    """Join the process group torchrun set up (NCCL for CUDA, gloo for the CPU) and return
    this process's device. Without torchrun nothing happens."""
    dev = device_for(device)
    if launched() and not _initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        _dist().init_process_group(backend, **kw)
    return dev


def destroy() -> None:
    if _initialized():
        # every rank tears down together: a gloo rank whose peer is already gone can abort
        # in its teardown ("terminate called without an active exception", SIGABRT)
        _dist().barrier()
        _dist().destroy_process_group()


@contextlib.contextmanager
def session(device="auto") -> Iterator[torch.device]:
    """`init` on entry, `destroy` on exit (for a CLI command's lifetime)."""
    started = launched() and not _initialized()
    dev = init(device)
    try:
        yield dev
    finally:
        if started:
            destroy()


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous share of range(n): the first n % ws ranks get one more."""
    r, ws = world() if rank is None else (rank, world_size)
    per, extra = divmod(n, ws)
    lo = r * per + min(r, extra)
    return range(lo, lo + per + (1 if r < extra else 0))


def strided(items: list, rank: int | None = None, world_size: int | None = None) -> list:
    """Round-robin share of a list: items r, r + ws, r + 2 ws, ..."""
    r, ws = world() if rank is None else (rank, world_size)
    return items[r::ws]


def barrier() -> None:
    if active():
        _dist().barrier()


def gather(obj) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); [obj] without a group."""
    if not active():
        return [obj]
    out = [None] * world()[1] if is_main() else None
    _dist().gather_object(obj, out, dst=0)
    return out


def all_gather(obj) -> list:
    """Every rank's ``obj`` in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world()[1]
    _dist().all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float) -> float:
    """The mean of a float over ranks."""
    if not active():
        return float(value)
    return sum(all_gather(float(value))) / world()[1]


__all__ = ["active", "all_gather", "barrier", "broadcast", "destroy", "device_for",
           "env_world", "gather", "init", "is_main", "launched", "mean", "session", "shard",
           "strided", "world"]
