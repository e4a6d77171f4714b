"""The defaults, in one place: data, schedule, sampler, the built-in recipes, the cache.

A leaf module: it imports nothing from noiseshift but the size switch (tiny.py, itself a
leaf), so every layer can read it. The one rule:
a value here is written nowhere else; a signature, library or CLI, that shares it names it
(``steps: int = DEFAULT_DENOISER["steps"]``), so editing it here changes the Python API, the
CLI and the cache keys together.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .tiny import sized

DEFAULT_DATA = {"name": "digits", "side": 16}
DEFAULT_SCHEDULE = "linear"
DEFAULT_SAMPLER = "euler-maruyama"
DEFAULT_STEPS = 16
DEFAULT_N = sized("n", 512)  # NOISESHIFT_TINY=1: 64
# Bootstrap resamples behind every confidence interval.
N_BOOT = 200
# `tune`: samples per seed of the baseline and of each finalist, and of every candidate at
# the start. 2048 because at 1024 an ODE solver's FD change against the stochastic baseline
# is not resolved on the default model (paired CIs of +-1.3 around changes of -1.2); at 2048
# it is, on seeds 0, 1 and 2 (docs/results.md, "`noiseshift tune`").
TUNE_N_FINAL = sized("n", 2048)
TUNE_N_START = 64

# The built-in denoiser: a ~96k-parameter conv UNet (16/32 channels) on 16x16 digits,
# class-conditional, with noise-condition dropout 0.3 (for classifier-free NAG) and class
# dropout 0.1 (for CFG). Its training budget is sized to <= 3 minutes on 2 CPU cores; it
# reaches FD 3.2 and 96% class accuracy (analysis/classifier.py's digits classifier) with
# Euler-Maruyama at 16 steps.
DEFAULT_DENOISER = sized("denoiser", {
    "arch": "unet",
    "channels": [16, 32],
    "steps": 1500,
    "batch_size": 64,
    "lr": 2e-3,
    "t_dropout": 0.3,
    "class_dropout": 0.1,
    "prediction": "velocity",
    "ema_decay": 0.999,
    "seed": 0,
})


def cache_dir() -> Path:
    """``$NOISESHIFT_CACHE``, else ``~/.cache/noiseshift``."""
    env = os.environ.get("NOISESHIFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "noiseshift"


def recipe_key(*parts) -> str:
    """A short stable hash of JSON-able parts, for cache file names."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


# The built-in noise-level estimator for DEFAULT_DATA / DEFAULT_SCHEDULE: a 51k-parameter
# conv posterior over 100 bins of t (Haar band noise, gauss head), 800 steps of 256 (held-out
# MAE of t 0.018 on 16x16 digits, a little better than the subspace oracle's 0.019); about a
# minute on 2 CPU cores. lr from a one-seed sweep on 16x16 digits at 800 steps (held-out MAE
# 0.026 at lr 5e-3, 0.020 at 1e-2, 0.018 at 2e-2; 1e-2 leaves headroom for other data).
DEFAULT_ESTIMATOR = sized("estimator", {"bins": 100, "steps": 800, "lr": 1e-2,
                                        "train_batch": 256, "ema_decay": 0.99,
                                        "head": "gauss", "haar_levels": 2, "seed": 0})


# The demo's mixture: 64-d, where the exact posterior of t is sharp enough to read a shift.
DEMO_GMM = {"name": "gmm", "dim": 64, "components": 8, "std": 0.25, "seed": 0, "n": 4096}
# The mixture's denoiser: an MLP, otherwise the default recipe.
GMM_DENOISER = {**DEFAULT_DENOISER, "arch": "mlp", "channels": None}
