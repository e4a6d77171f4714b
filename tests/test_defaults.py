"""The defaults live in `defaults.py` once: cached built-ins keep their file names, and the
Python API's defaults are the recipes'."""

import inspect

import pytest

from noiseshift import pretrained
from noiseshift.analysis.classifier import CLASSIFIER
from noiseshift.defaults import (
    DEFAULT_DATA,
    DEFAULT_DENOISER,
    DEFAULT_ESTIMATOR,
    DEFAULT_SCHEDULE,
    DEMO_GMM,
    recipe_key,
)
from noiseshift.estimators import LearnedEstimator
from noiseshift.training import train_denoiser

# The cache names of the built-in models as of 2026-12-03: a change here retrains every
# user's cached models, so it must be deliberate.
QUICK = {"steps": 150}  # the quick demo's overrides
CACHED = [
    (DEFAULT_DATA, "linear", None, "denoiser-582cc4f6b7.pt", "estimator-efc77914eb.pt"),
    (DEFAULT_DATA, "vp-cosine", None, "denoiser-4dc389e76f.pt", "estimator-fe6e82ff63.pt"),
    (DEFAULT_DATA, "linear", QUICK, "denoiser-34864e5ce0.pt", "estimator-44faaab150.pt"),
    (DEMO_GMM, "linear", None, "denoiser-021ef8d0b3.pt", "estimator-bf30fbdbbe.pt"),
    (DEMO_GMM, "linear", QUICK, "denoiser-be4a23e037.pt", "estimator-9b0d1ca2f1.pt"),
]


@pytest.mark.parametrize("spec, schedule, overrides, denoiser, estimator", CACHED)
def test_builtin_cache_names_unchanged(spec, schedule, overrides, denoiser, estimator):
    assert pretrained.cached_denoiser_path(spec, schedule, overrides).name == denoiser
    assert pretrained.cached_estimator_path(spec, schedule, overrides).name == estimator


def test_classifier_cache_key_unchanged():
    assert recipe_key(CLASSIFIER) == "9531abe090"


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_train_denoiser_defaults_are_the_recipe():
    sig = _defaults(train_denoiser)
    assert sig["schedule"] == DEFAULT_SCHEDULE
    training = {k: v for k, v in DEFAULT_DENOISER.items() if k not in ("arch", "channels")}
    assert {k: sig[k] for k in training} == training


def test_learned_estimator_defaults_are_the_recipe():
    assert {k: _defaults(LearnedEstimator)[k] for k in DEFAULT_ESTIMATOR} == DEFAULT_ESTIMATOR
    assert {k: LearnedEstimator().get_params()[k] for k in DEFAULT_ESTIMATOR} == \
        DEFAULT_ESTIMATOR
