"""The diffusers DDPM testbed: an outside-style model, weaker than the project's own.

A diffusers UNet2DModel DDPM (eps prediction, DDPMScheduler, 1000 linear-beta steps,
clip_sample off) trained briefly on the built-in 16x16 digits with diffusers' own
``add_noise``, the way a user would train one outside noiseshift (`tiny.train_ddpm`): the
FULL recipe of examples/diffusers_ddpm_digits.py (bit-identical weights), issue 20's
"outside model" recipe, about 6 minutes on one idle CPU thread. Sampled with DDIM trailing
at 50 steps it lands at FD 25-60 in the digits classifier's space (seeds 0-2, n = 256;
the project's own model is near 3-4), with a few samples per run far outside the data's
range, and its late states carry off-manifold
content that both meters read as noise (docs/results.md, "Do no harm").
`ddpm_testbed_folder()` gives its pipeline folder, for ``noiseshift sample --model
diffusers:DIR``; trained on first use, then cached.
"""

from __future__ import annotations

from pathlib import Path

from ..data import load_data
from ..defaults import DEFAULT_DATA
from ..tiny import enabled
from .tiny import cached_ddpm_folder

#: The recipe (`tiny.train_ddpm`'s keywords). Its hash names the cached folder.
DDPM_TESTBED = {"steps": 1500, "batch_size": 64, "lr": 2e-3, "channels": [16, 32], "seed": 0}
#: Under NOISESHIFT_TINY: a smoke-test recipe with its own cache key; its numbers mean nothing.
DDPM_TESTBED_TINY = {**DDPM_TESTBED, "steps": 4, "batch_size": 8, "channels": [8, 16]}


def ddpm_testbed_folder(progress=None) -> Path:
    """The testbed's pipeline folder in the cache (`defaults.cache_dir()`), trained on first
    use. ``progress(info)`` gets the training loop's per-step info."""
    recipe = DDPM_TESTBED_TINY if enabled() else DDPM_TESTBED
    return cached_ddpm_folder(load_data(DEFAULT_DATA), progress=progress, **recipe)


__all__ = ["DDPM_TESTBED", "ddpm_testbed_folder"]
