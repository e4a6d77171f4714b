"""The built-in models, trained on first use and then cached, and `get_estimator`.

Everything a command uses when the user names no model or estimator comes from here (the
default settings themselves live in the leaf `defaults`). Cached models live in `cache_dir()`
under a name that hashes their recipe, so a changed recipe trains afresh instead of loading a
stale file. `get_estimator(name_or_path, data, schedule)` gives any estimator: a checkpoint
path, or one of `NAMES`; it lives here, above `estimators/`, because `learned` is the cached
built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .data import Dataset, check_shape, describe_spec, load_data, parse_data_spec
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


def cached_estimator_path(spec: dict, schedule, overrides: dict | None = None,
                          shape=None) -> Path:
    """The cache file of a learned estimator, named by a hash of (data, schedule, recipe) and,
    for user data (files, folders, latents), the sample shape and the files' size and time
    (`_user_data_key`). A built-in's spec fixes its shape, so its key is what it always was
    (the demo's and the default digits estimator's caches stay valid)."""
    parts = [spec, _schedule_key(schedule), _estimator_recipe(overrides)]
    if shape is not None:
        parts.append(list(shape))
    return cache_dir() / f"estimator-{recipe_key(*parts)}.pt"


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


#: Data kinds a user brings: their cache keys also hold the shape and the files' size and time.
USER_DATA = ("file", "latents", "images")


def _user_data_key(spec: dict, data: Dataset) -> list:
    """The sample shape, and (size, mtime) of the file or of every file in the folder."""
    p = Path(spec["path"])
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    stats = [(str(q), q.stat().st_size, int(q.stat().st_mtime)) for q in files if q.exists()]
    return [list(data.shape), recipe_key(stats)]


def cached_estimator(spec: dict, schedule, overrides: dict | None = None, device="auto",
                     progress: Callable[[dict], None] | None = None, data: Dataset | None = None):
    """A learned estimator for the data `spec` under `schedule`: from the cache, or trained
    and cached (through a temporary file and a rename) on first use. `data` is the loaded
    spec, when the caller has it. Before training, `progress` gets one call with a "note":
    a line saying what is trained and where it is cached."""
    user = spec.get("name") in USER_DATA
    if user and data is None:
        data = load_data(spec)
    path = cached_estimator_path(spec, schedule, overrides,
                                 _user_data_key(spec, data) if user else None)
    if path.exists():
        try:
            return LearnedEstimator.load(path, device=device)
        except CheckpointError:
            pass
    data = load_data(spec) if data is None else data
    recipe = _estimator_recipe(overrides)
    if progress is not None:
        progress({"step": 0, "steps": recipe["steps"], "note": (
            f"training the learned estimator for {describe_spec(spec)} "
            f"{tuple(data.shape)} under {get_schedule(schedule).name} (first use only, "
            f"{recipe['steps']} steps); caching it at {path}")})
    est = LearnedEstimator(**recipe, device=device)
    est.fit(data, schedule, progress=progress)
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


def default_estimator(data_spec: dict | None = None, schedule=DEFAULT_SCHEDULE, device="auto",
                      progress: Callable[[dict], None] | None = None,
                      data: Dataset | None = None):
    """The learned estimator for `data_spec` (default: `DEFAULT_DATA`) under `schedule`:
    cached, or trained and cached on first use, for any data a spec can name
    (`cached_estimator`)."""
    spec = DEFAULT_DATA if data_spec is None else data_spec
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    return cached_estimator(spec, get_schedule(schedule), device=device, progress=progress,
                            data=data)


def get_estimator(name_or_path: str | Path, data: Dataset | dict | str | None = None,
                  schedule: Schedule | str | dict | None = None, *, device: str = "auto",
                  progress=None) -> NoiseLevelEstimator:
    """An estimator by checkpoint path or by name (one of `NAMES`).

    Named estimators are fitted on `data` (a Dataset or a data spec) for `schedule`; `learned`
    is trained on first use for the data and schedule, then cached (`cached_estimator`).
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
        return default_estimator(spec, schedule, device=device, progress=progress,
                                 data=data if isinstance(data, Dataset) else None)
    dataset = data if isinstance(data, Dataset) else load_data(data)
    return ESTIMATORS[key](device=device).fit(dataset, get_schedule(schedule), progress)


def independent_meter(data, schedule, avoid: str | None = None, device: str = "cpu"
                      ) -> NoiseLevelEstimator | None:
    """A meter the guidance does not optimise against, fitted on ``data`` (a Dataset or a
    spec) for ``schedule``: the subspace oracle (data in a known subspace), the exact
    posterior (a Gaussian mixture), else the wavelet estimator (images) or variance
    matching; never the kind ``avoid``. None when ``data`` is None (nothing to fit a meter
    on). The do-no-harm check, tune and the report's second opinion all read this one."""
    if data is None:
        return None
    ds = data if isinstance(data, Dataset) else load_data(data)
    for name, usable in (("subspace", ds.subspace is not None),
                         ("oracle", ds.mixture is not None), ("wavelet", len(ds.shape) == 3),
                         ("variance", True)):
        if usable and name != avoid:
            return ESTIMATORS[name](device=device).fit(ds, get_schedule(schedule))
    return None


def estimator_for(model, name_or_path: str | Path | None = None, *, device: str = "auto",
                  progress=None, data: str | dict | None = None) -> NoiseLevelEstimator:
    """The noise-level estimator that guides ``model``: ``name_or_path`` (default `learned`,
    trained on first use and cached) for ``data`` (a spec; default: the data named in the
    model's config), under the model's schedule. Data or an estimator whose sample shape is
    not the model's is refused."""
    spec = parse_data_spec(data) if data is not None else (
        (getattr(model, "config", None) or {}).get("data"))
    shape = (getattr(model, "config", None) or {}).get("shape")
    dataset = None
    if spec is not None and str(name_or_path or "learned") in NAMES:
        dataset = load_data(spec)
        if shape is not None:
            check_shape(dataset, shape, "model")
    est = get_estimator(name_or_path or "learned", dataset if dataset is not None else spec,
                        model.schedule, device=device, progress=progress)
    if shape is not None and tuple(est.shape_) != tuple(shape):
        raise NoiseshiftError(f"the {est.name} estimator reads states of shape "
                              f"{tuple(est.shape_)}, but the model's are {tuple(shape)}",
                              name_or_path if name_or_path not in NAMES else None)
    return est
