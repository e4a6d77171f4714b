import os
import tempfile

import pytest
import torch

# Tests never touch the user's cache of trained models. Set at import, before any fixture
# (module-scoped ones included) can train and cache something; one cache per session, so
# the digits classifier trains once.
os.environ["NOISESHIFT_CACHE"] = tempfile.mkdtemp(prefix="noiseshift-test-cache-")

# Two cores: keep torch from oversubscribing; OMP_NUM_THREADS wins when set.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


def pytest_addoption(parser):
    parser.addoption("--fuzz", action="store_true", help="run the long fuzz (1000+ cases)")
    parser.addoption("--docs", action="store_true", help="run every command block of README.md "
                     "and docs/ (tests/test_readme.py; minutes; .ci/run does)")


def pytest_collection_modifyitems(config, items):
    for mark, option, why in (("fuzz", "--fuzz", "long fuzz"),
                              ("docs", "--docs", "the README and docs blocks")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{why}: run with {option}")
        for item in items:
            if mark in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Small models gain nothing from intra-op threads, and OpenMP spin-waits badly when the
    two cores are shared (a tiny MLP ran 20x slower under load with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
