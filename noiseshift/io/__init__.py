"""Files: every byte noiseshift puts on disk or reads back goes through this package.

- `atomic`: the one atomic writer (temporary file beside the target, fsync, rename);
- `h5`: HDF5 guards and helpers shared by the file formats;
- `trajectories`: reading trajectory files (format v1, docs/trajectory-format.md);
- `writer`: `TrajectoryWriter`, the crash-safe recorder a sampler calls at every step;
- `estimates`: estimates files (an estimator's readings of a trajectory file);
- `validation`: `validate` and `file_kind` for either kind of file;
- `checkpoints`: the one checkpoint reader and writer (``weights_only=True``).
"""

from .atomic import atomic_path
from .checkpoints import read_checkpoint, save_checkpoint
from .estimates import (
    Estimates,
    EstimatesFile,
    EstimatesWriter,
    estimates_path,
    open_estimates,
    validate_estimates,
    write_estimates,
)
from .h5 import ESTIMATES_FORMAT, ESTIMATES_VERSION, FORMAT, VERSION
from .trajectories import DEFAULT_MAX_BYTES, Run, Steps, TrajectoryFile, open_trajectories
from .validation import file_kind, validate
from .writer import TrajectoryWriter

__all__ = [
    "DEFAULT_MAX_BYTES", "ESTIMATES_FORMAT", "ESTIMATES_VERSION", "FORMAT", "VERSION",
    "Estimates", "EstimatesFile", "EstimatesWriter", "Run", "Steps", "TrajectoryFile",
    "TrajectoryWriter", "atomic_path", "estimates_path", "file_kind", "open_estimates",
    "open_trajectories", "read_checkpoint", "save_checkpoint", "validate",
    "validate_estimates", "write_estimates",
]
