"""Device choice and seeding, shared by training, sampling and estimation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import NoiseshiftError

if TYPE_CHECKING:
    import torch

# torch is imported inside each function: the CLI's entry point reaches this module through
# `distributed`, and `noiseshift --help` and `inspect` load no torch.


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when there is one; anything else is passed to torch."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise NoiseshiftError(f"unknown device {device!r}; use auto, cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoiseshiftError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def generator(seed: int) -> torch.Generator:
    """A CPU generator: noise is drawn on the CPU and moved, so a seed gives the same
    numbers whatever the device."""
    import torch

    return torch.Generator().manual_seed(int(seed))


def randn(shape, gen: torch.Generator, device: torch.device, dtype: torch.dtype | None = None):
    """Standard normal draws on the CPU from ``gen``, moved to ``device`` (float32 unless
    ``dtype`` says otherwise)."""
    import torch

    return torch.randn(*shape, generator=gen, dtype=dtype or torch.float32).to(device)


def seeded_init(seed: int, build, *args, **kw):
    """``build(*args, **kw)`` with the global RNG seeded, then restored: seeded initial
    weights that leave every other random stream as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kw)
