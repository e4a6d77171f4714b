"""noiseshift: diagnose and correct noise shift in diffusion and flow-matching samplers."""

from .errors import CheckpointError, NoiseshiftError, TrajectoryError
from .schedules import Schedule, get_schedule

__version__ = "0.1.0"
__all__ = ["CheckpointError", "NoiseshiftError", "Schedule", "TrajectoryError", "get_schedule"]
