"""The size switch: ``NOISESHIFT_TINY=1`` shrinks the built-in recipes' training, the demo
and the default sample count so that every command block of the README runs in CI in
minutes (tests/test_readme.py). Its numbers mean nothing; never set it for results.

A leaf module, like defaults.py: it imports nothing from noiseshift. The tiny recipes get
their own cache keys (`defaults.recipe_key` hashes the recipe), so they never replace the
full models in the cache.
"""

from __future__ import annotations

import os

#: What NOISESHIFT_TINY=1 changes, by name: dicts update a recipe, numbers replace a default.
TINY = {
    "denoiser": {"steps": 40, "channels": [8, 16]},
    "estimator": {"steps": 40},
    "classifier": {"steps": 40},
    "n": 64,
    # the demo's --quick recipe overrides: none, so the tiny recipes above stand
    "quick": {"denoiser": {}, "estimator": {}},
}


def enabled() -> bool:
    """Whether NOISESHIFT_TINY is set to anything but empty or 0."""
    return os.environ.get("NOISESHIFT_TINY", "") not in ("", "0")


def sized(name: str, value):
    """``value``, or its tiny version (``TINY[name]``) when NOISESHIFT_TINY is set."""
    if not enabled():
        return value
    small = TINY[name]
    return {**value, **small} if isinstance(value, dict) else small
