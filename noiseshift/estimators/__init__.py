"""Noise-level estimators with one interface (see `base.NoiseLevelEstimator`): `learned`,
`variance`, `wavelet`, `oracle`, `subspace`.

Getting one by name or checkpoint path is `pretrained.get_estimator` (a layer above: the
`learned` one is the cached built-in); running one over a trajectory file is
`estimation.estimate_file`.
"""

from __future__ import annotations

from .base import ESTIMATORS, NoiseLevelEstimator, forward_noise, in_zones, interp
from .classical import VarianceMatching, WaveletMAD, haar_detail, haar_level
from .learned import LearnedEstimator
from .oracle import ExactOracle, SubspaceOracle

__all__ = [
    "ESTIMATORS", "ExactOracle", "LearnedEstimator", "NoiseLevelEstimator", "SubspaceOracle",
    "VarianceMatching", "WaveletMAD", "forward_noise", "haar_detail", "haar_level", "in_zones",
    "interp",
]
