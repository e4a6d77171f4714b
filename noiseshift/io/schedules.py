"""`--schedule` values that name a file: `from:traj.h5[:run]` takes a recorded run's schedule
(a built-in family, or a tabulated one from a diffusers pipeline)."""

from __future__ import annotations

from ..errors import NoiseshiftError
from ..schedules import Schedule, get_schedule
from .trajectories import open_trajectories


def schedule_from(text: str | dict | Schedule) -> Schedule:
    """A schedule by name (linear, vp-cosine, vp-linear, ve), as a dict or Schedule, or
    `from:FILE[:RUN]`: the schedule run RUN of trajectory file FILE was sampled under (RUN may
    be left out when every run in the file shares one schedule)."""
    if not isinstance(text, str) or not text.startswith("from:"):
        return get_schedule(text)
    rest = text[len("from:"):]
    path, run = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head.lower().endswith((".h5", ".hdf5")):
        path, run = head, tail
    with open_trajectories(path) as tf:
        names = [run] if run else list(tf.runs)
        if not names:
            raise NoiseshiftError("no runs in the file, so no schedule to take", path)
        schedules = {json_key(tf.run(n).schedule): tf.run(n).schedule for n in names}
    if len(schedules) > 1:
        raise NoiseshiftError(f"runs {names} follow {len(schedules)} different schedules; "
                              f"name one: from:{path}:RUN", path)
    return next(iter(schedules.values()))


def json_key(schedule: Schedule) -> str:
    return repr(sorted(schedule.to_dict().items(), key=lambda kv: kv[0]))
