"""The defaults, in one place, and the built-in models: trained on first use, then cached.

Everything a command uses when the user names no model, data, schedule or sampler comes
from here. Cached models live in `cache_dir()` under a name that hashes their recipe, so a
changed recipe trains afresh instead of loading a stale file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .defaults import (  # noqa: F401  (re-exported: the defaults' public home was here)
    DEFAULT_DATA,
    DEFAULT_DENOISER,
    DEFAULT_ESTIMATOR,
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    DEFAULT_STEPS,
    DEMO_GMM,
    GMM_DENOISER,
    cache_dir,
    recipe_key,
)


def _denoiser_recipe(spec: dict, overrides: dict | None) -> dict:
    base = DEFAULT_DENOISER if spec.get("name") == "digits" else GMM_DENOISER
    return {k: v for k, v in {**base, **(overrides or {})}.items() if v is not None}


def _estimator_recipe(overrides: dict | None) -> dict:
    return {**DEFAULT_ESTIMATOR, **(overrides or {})}


def _schedule_key(schedule):
    from .schedules import get_schedule

    return get_schedule(schedule).to_dict()


def cached_denoiser_path(spec: dict, schedule, overrides: dict | None = None) -> Path:
    key = recipe_key(spec, _schedule_key(schedule), _denoiser_recipe(spec, overrides))
    return cache_dir() / f"denoiser-{key}.pt"


def cached_estimator_path(spec: dict, schedule, overrides: dict | None = None) -> Path:
    key = recipe_key(spec, _schedule_key(schedule), _estimator_recipe(overrides))
    return cache_dir() / f"estimator-{key}.pt"


def cached_denoiser(spec: dict, schedule, overrides: dict | None = None, device="auto",
                    progress: Callable[[dict], None] | None = None):
    """A denoiser for built-in data under a recipe (the default's, changed by ``overrides``):
    loaded from the cache, or trained and cached on first use. ``progress(info)`` receives
    the training loop's per-step info ({"step", "steps", "loss"})."""
    from .data import load_data
    from .errors import CheckpointError
    from .models import load_model, save_model
    from .training import train_denoiser

    path = cached_denoiser_path(spec, schedule, overrides)
    if path.exists():
        try:
            return load_model(path, device=device)
        except CheckpointError:
            pass  # damaged or from an older layout: train afresh below
    model = train_denoiser(load_data(spec), schedule, device=device, on_step=progress,
                           **_denoiser_recipe(spec, overrides))
    model.info["source"] = "noiseshift built-in"
    save_model(model, path)
    return model


def cached_estimator(spec: dict, schedule, overrides: dict | None = None, device="auto",
                     progress: Callable[[dict], None] | None = None):
    """A learned estimator for built-in data: from the cache, or trained and cached (through
    a temporary file and a rename) on first use."""
    from .data import load_data
    from .errors import CheckpointError
    from .estimators import LearnedEstimator

    path = cached_estimator_path(spec, schedule, overrides)
    if path.exists():
        try:
            return LearnedEstimator.load(path, device=device)
        except CheckpointError:
            pass
    est = LearnedEstimator(**_estimator_recipe(overrides), device=device)
    est.fit(load_data(spec), schedule, progress=progress)
    est.save(path)
    return est


def default_model_path() -> Path:
    return cached_denoiser_path(DEFAULT_DATA, DEFAULT_SCHEDULE)


def default_model(device="auto", progress: Callable[[dict], None] | None = None):
    """The built-in default denoiser: loaded from the cache, or trained (and cached) on
    first use; ``progress`` is not called when the cache has it."""
    return cached_denoiser(DEFAULT_DATA, DEFAULT_SCHEDULE, device=device, progress=progress)


def load_or_default(path=None, device="auto", progress: Callable[[dict], None] | None = None):
    """The denoiser checkpoint at ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        return default_model(device=device, progress=progress)
    from .models import load_model

    return load_model(path, device=device)


def default_estimator_path() -> Path:
    return cached_estimator_path(DEFAULT_DATA, DEFAULT_SCHEDULE)


def default_estimator(data_spec: dict | None = None, schedule=None, device="auto",
                      progress: Callable[[dict], None] | None = None):
    """The built-in learned estimator for the default data and schedule, cached or trained on
    first use. Other data or schedules have no built-in estimator: a NoiseshiftError says
    how to train one."""
    from .errors import NoiseshiftError
    from .schedules import get_schedule

    spec = DEFAULT_DATA if data_spec is None else data_spec
    sch = get_schedule(DEFAULT_SCHEDULE if schedule is None else schedule)
    if _data_key(spec) != _data_key(DEFAULT_DATA) or sch != get_schedule(DEFAULT_SCHEDULE):
        data_opt = spec.get("path", spec.get("name")) if isinstance(spec, dict) else spec
        raise NoiseshiftError(
            f"no built-in estimator for data {json.dumps(spec, sort_keys=True)} with the "
            f"{sch.name} schedule (the built-in one reads {DEFAULT_DATA['name']} "
            f"{DEFAULT_DATA['side']}x{DEFAULT_DATA['side']} under {DEFAULT_SCHEDULE}); train "
            f"one with `noiseshift train-estimator --data {data_opt} --schedule {sch.name} "
            f"--out est.pt` and pass `--estimator est.pt`")
    return cached_estimator(DEFAULT_DATA, DEFAULT_SCHEDULE, device=device, progress=progress)


def _data_key(spec) -> str:
    """Data specs compare by what they load: {'name': 'digits'} is the default side."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict) and spec.get("name") == "digits":
        spec = {"side": DEFAULT_DATA["side"], **spec}
    return json.dumps(spec, sort_keys=True, default=str)
