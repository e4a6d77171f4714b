"""Files: every byte noiseshift puts on disk or reads back goes through this package.

- `atomic`: the one atomic writer (temporary file beside the target, fsync, rename);
- `checkpoints`: the one checkpoint reader and writer (``weights_only=True``).
"""

from .atomic import atomic_path
from .checkpoints import read_checkpoint, save_checkpoint

__all__ = ["atomic_path", "read_checkpoint", "save_checkpoint"]
