"""Checking any noiseshift HDF5 file (trajectories or estimates) and summarising it: what
`noiseshift inspect` shows."""

from __future__ import annotations

from collections.abc import Callable

from .estimates import validate_estimates
from .h5 import ESTIMATES_FORMAT, FORMAT, VERSION, guard, open_h5, str_attr
from .trajectories import open_trajectories

__all__ = ["file_kind", "validate"]


def file_kind(path) -> str:
    """'trajectories' or 'estimates', from the root `format` attribute."""
    with open_h5(path) as f, guard(path, "the root attributes"):
        fmt = str_attr(f.attrs.get("format"))
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
