import os

import pytest
import torch

# Two cores: keep torch from oversubscribing; OMP_NUM_THREADS wins when set.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


def pytest_addoption(parser):
    parser.addoption("--fuzz", action="store_true", help="run the long fuzz (1000+ cases)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--fuzz"):
        return
    skip = pytest.mark.skip(reason="long fuzz: run with --fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache of trained default models."""
    monkeypatch.setenv("NOISESHIFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
