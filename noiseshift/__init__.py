"""noiseshift: diagnose and correct noise shift in diffusion and flow-matching samplers."""

from .errors import CheckpointError, NoiseshiftError, TrajectoryError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "NoiseshiftError", "Schedule", "TrajectoryError", "get_schedule"]


def __getattr__(name: str):
    # The schedules (and numpy with them) load on first use: `noiseshift --help` imports this
    # package and needs neither.
    if name in ("Schedule", "get_schedule"):
        from . import schedules

        return getattr(schedules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
