"""What commands share that calls the library: a --data value as a spec, and the denoiser
loaded with a bar while the default one trains.

Apart from `common` so that `common` stays free of torch: `noiseshift --help` and `inspect`
import `common` and never load a model.
"""

from __future__ import annotations

from ..data import parse_data_spec
from ..recording import load_denoiser, needs_training
from .common import training_bar


def data_spec(text: str | None, size: int | None = None, dim: int | None = None) -> dict | None:
    """A --data value as a spec dict (None stays None)."""
    return None if text is None else parse_data_spec(text, size=size, dim=dim)


def denoiser_with_progress(path: str | None, device: str = "auto", quiet: bool = False):
    """`recording.load_denoiser`, with a progress bar when the default model trains."""
    if not needs_training(path):
        return load_denoiser(path, device)
    with training_bar(quiet, "training the default model (first use only)") as on_step:
        return load_denoiser(None, device, progress=on_step)
