"""The denoiser a command runs, loaded with a progress bar while the default one trains.

Apart from `common` and `inputs` because loading a denoiser imports the built-in models and
estimators (torch, scikit-learn): only the commands that load one pay for that.
"""

from __future__ import annotations

from ..recording import load_denoiser, needs_training
from .common import training_bar


def denoiser_with_progress(path: str | None, device: str = "auto", quiet: bool = False):
    """`recording.load_denoiser`, with a progress bar when the default model trains."""
    if not needs_training(path):
        return load_denoiser(path, device)
    with training_bar(quiet, "training the default model (first use only)") as on_step:
        return load_denoiser(None, device, progress=on_step)
