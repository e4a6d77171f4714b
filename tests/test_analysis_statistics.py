"""Statistics: bootstrap coverage and the Estimate's format."""

import numpy as np
import pytest

from noiseshift.analysis import statistics as S

pytestmark = pytest.mark.usefixtures("one_thread")


# -- bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_ci_covers_the_true_mean():
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(200):
        est = S.bootstrap(lambda i, x=rng.normal(size=100): x[i].mean(), 100, n_boot=200,
                          seed=rep)
        hits += est.lo <= 0.0 <= est.hi
    assert 0.88 <= hits / 200 <= 0.99


def test_estimate_formats():
    e = S.Estimate(1.23456, 1.0, 1.5)
    assert f"{e:.2f}" == "1.23 [1.00, 1.50]" and e.excludes_zero()
    assert e.to_dict()["value"] == 1.23456
