"""A seed gives the same bytes in `samples`, for every sampler (issue 7, part 5)."""

from __future__ import annotations

import h5py
import pytest
import torch

from noiseshift.models import build_model
from noiseshift.recording import sample_and_record
from noiseshift.sampling import SAMPLERS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # any fixed weights will do: the test is about the sampler's noise
    return build_model({"kind": "mlp", "shape": [6], "schedule": "linear", "width": 32,
                        "depth": 2, "num_classes": 3}).eval()


def recorded(path, model, sampler, seed):
    sample_and_record(model, path, "run", 16, sampler=sampler, steps=6, seed=seed,
                      device="cpu")
    with h5py.File(path, "r") as f:
        g = f["runs/run"]
        return g["samples"][()].tobytes(), g["states"][()].tobytes(), g["labels"][()].tobytes()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_same_seed_same_bytes(tmp_path, model, sampler):
    a = recorded(tmp_path / "a.h5", model, sampler, seed=11)
    b = recorded(tmp_path / "b.h5", model, sampler, seed=11)
    assert a == b  # samples, every recorded state, and the drawn labels
    c = recorded(tmp_path / "c.h5", model, sampler, seed=12)
    assert c[0] != a[0] and c[1] != a[1]  # the seed does reach the noise


def test_every_sampler_covered():
    assert {"euler", "heun", "euler-maruyama", "ddim"} <= set(SAMPLERS)
