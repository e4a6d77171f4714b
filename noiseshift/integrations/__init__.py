"""Bring your own model: record and guide diffusers pipelines and k-diffusion samplers.

- `noiseshift.integrations.diffusers`: `record(pipe, path)` and `guide(pipe, estimator, scale)`
  context managers that hook ``pipe.scheduler.step`` (extra: ``noiseshift[diffusers]``).
- `noiseshift.integrations.k_diffusion`: a recording callback for any k-diffusion ``sample_*``
  and a NAG-guided denoiser (extra: ``noiseshift[k-diffusion]``).
- `noiseshift.integrations.mixture_unet`: the Gaussian mixture's exact denoiser with
  UNet2DModel's call signature, the known-answer test bed.
- `noiseshift.integrations.levels`: the mapping of any noise level (a, s) onto a noiseshift
  schedule, shared by the adapters (docs/trajectory-format.md, "Writing from other libraries").

Importing this package (or the adapter modules) imports neither diffusers nor k-diffusion:
the adapters work on the objects a user hands them, and import a library only to load or
build one.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import NoiseshiftError

EXTRAS = {"diffusers": "diffusers", "k_diffusion": "k-diffusion"}


def require(module: str):
    """Import an optional library, or raise a one-line NoiseshiftError with the pip command."""
    try:
        return import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise NoiseshiftError(f"{module} is not installed: pip install 'noiseshift[{extra}]'"
                              ) from None


__all__ = ["EXTRAS", "require"]
