"""The built-in models, trained on first use and then cached, and `get_estimator`.

Everything a command uses when the user names no model or estimator comes from here (the
default settings themselves live in the leaf `defaults`). Cached models live in `cache_dir()`
under a name that hashes their recipe, so a changed recipe trains afresh instead of loading a
stale file. `get_estimator(name_or_path, data, schedule)` gives any estimator: a checkpoint
path, or one of `NAMES`; it lives here, above `estimators/`, because `learned` is the cached
built-in one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .data import Dataset, load_data
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
from .errors import CheckpointError, NoiseshiftError
from .estimators import ESTIMATORS, LearnedEstimator, NoiseLevelEstimator
from .models import load_model, save_model
from .schedules import Schedule, get_schedule
from .training import train_denoiser

#: The estimators `get_estimator` knows by name.
NAMES = ("learned", "variance", "wavelet", "oracle", "subspace")


def _denoiser_recipe(spec: dict, overrides: dict | None) -> dict:
    base = DEFAULT_DENOISER if spec.get("name") == "digits" else GMM_DENOISER
    return {k: v for k, v in {**base, **(overrides or {})}.items() if v is not None}


def _estimator_recipe(overrides: dict | None) -> dict:
    return {**DEFAULT_ESTIMATOR, **(overrides or {})}


def _schedule_key(schedule):
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
    return load_model(path, device=device)


def default_estimator_path() -> Path:
    return cached_estimator_path(DEFAULT_DATA, DEFAULT_SCHEDULE)


def default_estimator(data_spec: dict | None = None, schedule=None, device="auto",
                      progress: Callable[[dict], None] | None = None):
    """The built-in learned estimator for the default data and schedule, cached or trained on
    first use. Other data or schedules have no built-in estimator: a NoiseshiftError says
    how to train one."""
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


def get_estimator(name_or_path: str | Path, data: Dataset | dict | str | None = None,
                  schedule: Schedule | str | dict | None = None, *, device: str = "auto",
                  progress=None) -> NoiseLevelEstimator:
    """An estimator by checkpoint path or by name (one of `NAMES`).

    Named estimators are fitted on `data` (a Dataset or a data spec) for `schedule`; `learned`
    is the built-in default estimator (cached, or trained on first use), which exists only for
    the built-in default data and schedule.
    """
    key = str(name_or_path)
    if key not in NAMES:
        path = Path(key)
        if path.exists() or path.suffix:
            return NoiseLevelEstimator.load(path, device=device)
        raise NoiseshiftError(f"unknown estimator {key!r}: give a checkpoint file or one of "
                              f"{', '.join(NAMES)}")
    if data is None or schedule is None:
        raise NoiseshiftError(f"the {key} estimator needs the data and schedule it reads")
    spec = data.spec if isinstance(data, Dataset) else data
    if key == "learned":
        return default_estimator(spec, schedule, device=device, progress=progress)
    dataset = data if isinstance(data, Dataset) else load_data(data)
    return ESTIMATORS[key](device=device).fit(dataset, get_schedule(schedule), progress)


def estimator_for(model, name_or_path: str | Path | None = None, *, device: str = "auto",
                  progress=None) -> NoiseLevelEstimator:
    """The noise-level estimator that guides ``model``: ``name_or_path`` (default `learned`,
    the built-in one) for the data named in the model's config, under its schedule."""
    data = (getattr(model, "config", None) or {}).get("data")
    return get_estimator(name_or_path or "learned", data, model.schedule, device=device,
                         progress=progress)
