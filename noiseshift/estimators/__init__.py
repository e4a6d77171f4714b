"""Noise-level estimators with one interface (see `base.NoiseLevelEstimator`).

`get_estimator(name_or_path, data, schedule)` gives any of them: a checkpoint path, or one of
`learned` (the built-in default), `variance`, `wavelet`, `oracle`, `subspace`.
"""

from __future__ import annotations

from pathlib import Path

from ..data import Dataset, load_data
from ..errors import NoiseshiftError
from ..schedules import Schedule, get_schedule
from .apply import estimate_file, summarize, summarize_estimates
from .base import ESTIMATORS, NoiseLevelEstimator, forward_noise, interp
from .classical import VarianceMatching, WaveletMAD, haar_detail
from .learned import LearnedEstimator
from .oracle import ExactOracle, SubspaceOracle

NAMES = ("learned", "variance", "wavelet", "oracle", "subspace")


def get_estimator(name_or_path: str | Path, data: Dataset | dict | str | None = None,
                  schedule: Schedule | str | dict | None = None, *, device: str = "auto",
                  progress=None) -> NoiseLevelEstimator:
    """An estimator by checkpoint path or by name.

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
        from ..pretrained import default_estimator

        return default_estimator(spec, schedule, device=device, progress=progress)
    dataset = data if isinstance(data, Dataset) else load_data(data)
    return ESTIMATORS[key](device=device).fit(dataset, get_schedule(schedule), progress)


__all__ = [
    "ESTIMATORS", "NAMES", "ExactOracle", "LearnedEstimator", "NoiseLevelEstimator",
    "SubspaceOracle", "VarianceMatching", "WaveletMAD", "estimate_file", "forward_noise",
    "get_estimator", "haar_detail", "interp", "summarize", "summarize_estimates",
]
