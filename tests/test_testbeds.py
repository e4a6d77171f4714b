"""The testbeds (noiseshift/testbeds.py), the exact mixture metrics they report, and the
bench harness (bench/guidance_digits.py) run end to end on a tiny testbed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noiseshift.analysis.quality import (
    energy_distance,
    energy_distance_difference,
    mode_shares,
    mode_weights_tv,
)
from noiseshift.data import GaussianMixture, make_gmm
from noiseshift.defaults import DEFAULT_DATA
from noiseshift.errors import NoiseshiftError
from noiseshift.pretrained import default_model_path
from noiseshift.testbeds import TESTBEDS, get_testbed
from noiseshift.tiny import TINY

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_registry_names_every_testbed_with_its_meter_and_metrics():
    assert set(TESTBEDS) == {"digits-em128", "digits-em250", "digits-weak", "gmm64-250",
                             "digits-ddpm"}
    assert TESTBEDS["digits-em128"].steps == 128 and TESTBEDS["digits-em250"].steps == 250
    assert TESTBEDS["gmm64-250"].meter == "oracle"
    assert "log_likelihood" in TESTBEDS["gmm64-250"].metrics
    assert all(TESTBEDS[k].meter == "subspace" for k in ("digits-em250", "digits-weak"))
    ddpm = TESTBEDS["digits-ddpm"]
    assert ddpm.is_pipeline and ddpm.sampler == "ddim" and ddpm.steps == 50
    assert ddpm.loader.endswith(":ddpm_testbed_folder")


def test_the_default_model_testbeds_are_the_cached_default_model():
    assert TESTBEDS["digits-em250"].cache_path() == default_model_path()
    assert TESTBEDS["digits-weak"].cache_path() != default_model_path()
    assert TESTBEDS["gmm64-250"].cache_path() != default_model_path()


def test_unknown_testbed_is_the_users_mistake():
    with pytest.raises(NoiseshiftError, match="unknown testbed 'nope'.*digits-weak"):
        get_testbed("nope")


@pytest.mark.parametrize("name", ["digits-em128", "digits-weak", "gmm64-250"])
def test_tiny_load_trains_caches_and_reloads(name, monkeypatch, one_thread):
    monkeypatch.setenv("NOISESHIFT_TINY", "1")
    monkeypatch.setitem(TINY["denoiser"], "steps", 5)  # the tiny recipe, fewer steps still
    tb = TESTBEDS[name]
    assert tb.recipe()["steps"] == 5 and tb.cache_path() != default_model_path()
    model = tb.load()
    assert tb.cache_path().exists()
    assert model.info["steps"] == 5
    x = torch.randn(3, *model.config["shape"])
    with torch.no_grad():
        out = model(x, torch.full((3,), 0.5))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert tb.load().config == model.config  # from the cache the second time
    assert model.num_classes == (0 if name == "gmm64-250" else 10)


def test_the_ddpm_testbed_names_its_loader_and_fails_plainly_without_it():
    tb = TESTBEDS["digits-ddpm"]
    bad = type(tb)(**{**tb.__dict__, "loader": "noiseshift.no_such_module:f"})
    with pytest.raises(NoiseshiftError, match="digits-ddpm needs"):
        bad.load()


# -- the exact mixture metrics: known answers -------------------------------------------------

def _two_modes():
    return GaussianMixture(torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64),
                           torch.tensor([0.5, 0.5], dtype=torch.float64), [3.0, 1.0])


def test_mode_shares_and_tv_on_samples_placed_at_the_means():
    mix = _two_modes()
    x = torch.tensor([[0.0, 0.0]] * 1 + [[10.0, 0.0]] * 3, dtype=torch.float64)
    assert np.allclose(mode_shares(x, mix), [0.25, 0.75])
    # weights (0.75, 0.25), shares (0.25, 0.75): TV = (0.5 + 0.5) / 2
    assert mode_weights_tv(x, mix) == pytest.approx(0.5)
    x = torch.tensor([[0.0, 0.0]] * 3 + [[10.0, 0.0]], dtype=torch.float64)
    assert mode_weights_tv(x, mix) == pytest.approx(0.0)


def test_energy_difference_is_zero_for_one_run_and_matches_the_two_energies():
    data = make_gmm(dim=8, components=3, n=64)
    mix = data.mixture
    good, _ = mix.sample(64, torch.Generator().manual_seed(1))
    bad = good + 1.0
    same = energy_distance_difference(good, good, mix, n_ref=256, n_boot=20)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)
    d = energy_distance_difference(bad, good, mix, n_ref=256, n_boot=50)
    eg = energy_distance(good, mix, n_ref=256, n_boot=20).value
    eb = energy_distance(bad, mix, n_ref=256, n_boot=20).value
    assert d.value == pytest.approx(eg - eb)
    assert d.hi < 0  # moving every sample off the mixture is resolvably worse


def test_energy_difference_refuses_unpaired_runs():
    mix = make_gmm(dim=4, components=2, n=16).mixture
    with pytest.raises(NoiseshiftError):
        energy_distance_difference(torch.zeros(4, 4), torch.zeros(5, 4), mix, n_ref=16)


# -- the harness, end to end on the tiny mixture testbed -------------------------------------

@pytest.fixture
def harness(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import guidance_digits

    from noiseshift.estimators import ExactOracle
    # the learned mixture estimator takes a minute to train; the exact oracle stands in
    monkeypatch.setattr(guidance_digits, "default_estimator",
                        lambda spec, schedule, **kw: ExactOracle(calib_samples=32).fit(
                            make_gmm(**{k: v for k, v in spec.items() if k != "name"}),
                            schedule))
    yield guidance_digits
    sys.modules.pop("guidance_digits", None)


def test_parse_setting_reads_the_token_table_and_nag_modes(harness):
    p = harness.parse_setting
    assert p("unguided") == {}
    assert p("eps:1.005+estimator-step:1.5@0.2-0.8") == {
        "eps_scale": 1.005, "nag_mode": "estimator-step", "nag_scale": 1.5,
        "interval": (0.2, 0.8)}
    assert p("ts:0.2-0.3") == {"time_shift": (0.2, 0.3)}
    assert p("cfg:1+cf:1~cap4") == {"cfg_scale": 1.0, "nag_mode": "cf", "nag_scale": 1.0,
                                    "cap": 4.0}
    assert p("dcw-pixel:-0.01+corr:0.3-1") == {"dcw": -0.01, "dcw_form": "pixel",
                                               "corrector": (0.3, 1.0)}
    sampler_side = p("sampler:heun+steps:3")
    assert {k: f(None) for k, f in sampler_side.items()} == {"sampler": "heun", "steps": 3}


def test_harness_end_to_end_on_the_tiny_mixture_testbed(harness, monkeypatch, tmp_path,
                                                        one_thread):
    monkeypatch.setenv("NOISESHIFT_TINY", "1")
    su = harness.setup(testbed="gmm64-250")
    assert su.mixture is not None and su.pixels is None and su.meter.name == "oracle"
    su.steps = 4
    base = harness.run(su, "unguided", 16, 0)
    same = harness.compare(su, base, harness.run(su, "unguided", 16, 0), n_boot=20)
    assert same["dfd"] == [0.0, 0.0, 0.0] and same["dlog_likelihood"] == [0.0, 0.0, 0.0]
    assert same["denergy"] == [0.0, 0.0, 0.0] and same["dmode_tv"] == 0.0
    row = harness.compare(su, base, harness.run(su, "eps:1.05", 16, 0), n_boot=20)
    assert row["setting"] == "eps-scale-1.05" and row["dfd"][0] != 0
    assert row["cost"] > 0 and np.isfinite(row["log_likelihood"][0])
    heun = harness.run(su, "sampler:heun+steps:3+dcw-pixel:-0.01", 16, 0)
    assert heun.name == "sampler:heun+steps:3+dcw-pixel:-0.01" and len(heun.t) == 3
    out = tmp_path / "rows.jsonl"
    monkeypatch.setattr(harness, "setup", lambda *a, **k: su)
    rows = harness.bench_digits(["unguided", "eps:1.05"], 16, [0], 4, out=str(out),
                                testbed="gmm64-250")
    saved = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in saved] == ["unguided", "eps:1.05"] == [r["text"] for r in rows]
    assert saved[0]["model"] == "gmm64-250" and saved[0]["meter"] == "oracle"


def test_harness_refuses_the_pipeline_testbed(harness):
    with pytest.raises(NoiseshiftError, match="diffusers pipeline"):
        harness.setup(testbed="digits-ddpm")


def test_default_data_is_what_the_digits_testbeds_use():
    assert all(TESTBEDS[k].data == DEFAULT_DATA for k in TESTBEDS if k.startswith("digits"))
