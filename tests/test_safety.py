"""Do no harm (analysis/safety.py): the pilot's statistics, the meter it chooses, the guard
backing off a harmful correction and keeping a harmless one, and the DDPM testbed folder."""

import numpy as np
import pytest

from noiseshift.analysis.safety import (
    MIN_PILOT,
    guard,
    guarded,
    mean_abs_shift,
    safety_message,
    shift_ratio,
)
from noiseshift.data import MixtureDenoiser, load_data, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.guidance import build_guidance
from noiseshift.pretrained import independent_meter
from noiseshift.recording import SamplerBackend
from noiseshift.runspec import RunSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mean_abs_shift_is_the_mean_over_steps_of_the_step_means_size():
    d = np.array([[0.1, 0.3], [-0.2, -0.2], [0.5, -0.5]])  # step means 0.2, -0.2, 0
    assert mean_abs_shift(d) == pytest.approx(0.4 / 3)
    assert mean_abs_shift(d, np.array([0, 0])) == pytest.approx((0.1 + 0.2 + 0.5) / 3)


def test_shift_ratio_of_a_doubled_shift_is_two_with_a_tight_paired_ci():
    base = np.random.default_rng(0).normal(0.01, 0.02, size=(8, 32))
    r = shift_ratio(2 * base, base)
    assert r.value == pytest.approx(2.0) and r.lo == pytest.approx(2.0)
    assert r.hi == pytest.approx(2.0)
    same = shift_ratio(base, base)
    assert same.value == pytest.approx(1.0)


@pytest.fixture(scope="module")
def gmm():
    data = make_gmm(dim=64, components=8, std=0.25, seed=0, n=2048)
    return data, MixtureDenoiser(data.mixture, "linear"), independent_meter(data, "linear")


def test_independent_meter_never_the_guiding_one(gmm):
    data, _, meter = gmm
    assert independent_meter(None, "linear") is None
    assert meter.name == "oracle"
    assert independent_meter(data, "linear", avoid="oracle").name == "variance"  # vectors
    digits = {"name": "digits", "side": 16}
    assert independent_meter(digits, "linear").name == "subspace"


def _make(model, b_of_scale):
    """``make`` for epsilon scaling with b = b_of_scale(scale): a correction whose harm
    grows with its scale (b < 1 inflates the predicted noise)."""

    def make(scale, n):
        guided, guidance = build_guidance(model, eps_scale=(b_of_scale(scale),))
        return guidance, SamplerBackend(model, guided, device="cpu")

    return make


def _spec(model, n=24):
    return RunSpec.for_model(model, n=n, sampler="euler", steps=6, seed=0)


def test_guard_keeps_a_harmless_correction_and_backs_off_a_harmful_one(gmm):
    _, model, meter = gmm
    spec = _spec(model)
    kept = guard(spec, _make(model, lambda s: 1.0 + 1e-6 * s), 1.0, meter, pilot_n=MIN_PILOT)
    assert kept.action == "kept" and kept.scale == 1.0 and kept.message() is None
    assert kept.readings[0]["ratio"] == pytest.approx(1.0, abs=1e-3)
    harm = guard(spec, _make(model, lambda s: 1 / (1 + s)), 4.0, meter, pilot_n=MIN_PILOT)
    first = harm.readings[0]
    assert first["scale"] == 4.0 and first["harm"] and first["ratio_lo"] > 1.5
    assert harm.action in ("reduced", "stopped") and len(harm.readings) >= 2
    assert [r["scale"] for r in harm.readings] == [4.0 / 2**k for k in range(len(harm.readings))]
    assert all(r["harm"] for r in harm.readings[:-1])
    line = harm.message()
    assert line.startswith("safety: ") and "oracle meter" in line and "\n" not in line
    assert safety_message(harm.to_dict()) == line


def test_guarded_stops_and_says_why_or_records_the_check(gmm):
    _, model, meter = gmm
    spec = _spec(model).with_guidance({"kind": "eps"})
    with pytest.raises(NoiseshiftError, match="safety: stopped NAG at scale 1"):
        guarded(spec, _make(model, lambda s: 0.3), 1.0, meter, pilot_n=MIN_PILOT, halvings=1)
    out, backend = guarded(spec, _make(model, lambda s: 1.0 + 1e-6 * s), 1.0, meter,
                           pilot_n=MIN_PILOT)
    assert out.guidance["safety"]["action"] == "kept" and out.n == spec.n
    assert isinstance(backend, SamplerBackend)


def test_too_small_a_pilot_is_skipped_and_says_so(gmm):
    _, model, meter = gmm
    check = guard(_spec(model, n=4), _make(model, lambda s: 0.3), 1.0, meter)
    assert check.action == "skipped" and check.scale == 1.0
    assert f"at least {MIN_PILOT}" in check.message()


def test_ddpm_testbed_folder_trains_once_then_loads(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    from noiseshift.integrations import ddpm_testbed

    monkeypatch.setenv("NOISESHIFT_TINY", "1")
    monkeypatch.setenv("NOISESHIFT_CACHE", str(tmp_path))
    calls = []
    folder = ddpm_testbed.ddpm_testbed_folder(progress=calls.append)
    assert (folder / "model_index.json").is_file() and folder.is_relative_to(tmp_path)
    assert calls and calls[-1]["steps"] == ddpm_testbed.DDPM_TESTBED_TINY["steps"]
    again = ddpm_testbed.ddpm_testbed_folder(progress=calls.append)
    assert again == folder and len(calls) == ddpm_testbed.DDPM_TESTBED_TINY["steps"]
    # The pipeline path records the check in the run's attributes.
    from noiseshift.estimators import SubspaceOracle
    from noiseshift.integrations.pipeline_runs import folder_run
    from noiseshift.io import open_trajectories
    from noiseshift.recording import record_with_baseline

    est = SubspaceOracle(device="cpu").fit(load_data({"name": "digits", "side": 16}),
                                             "vp-cosine")
    spec, backend = folder_run(f"diffusers:{folder}", scheduler="ddim", device="cpu",
                               safety=True, n=MIN_PILOT, steps=2, estimator=est,
                               nag_scale=1.0)
    check = spec.guidance["safety"]
    assert check["meter"] == "wavelet" and check["pilot_n"] == MIN_PILOT  # not the guide
    if check["action"] != "stopped":
        rec = record_with_baseline(spec, backend, tmp_path / "t.h5")
        with open_trajectories(tmp_path / "t.h5") as f:
            assert f.run(rec.run).attrs["guidance"]["safety"] == check


def _row(**v):
    import pandas as pd

    out = {}
    for k, (val, lo, hi) in v.items():
        out.update({k: val, f"{k}_lo": lo, f"{k}_hi": hi})
    return pd.Series(out)


def test_report_flags_meters_that_disagree():
    from noiseshift.report.findings import meters_disagree

    issue = _row(mean_abs_delta=(0.050, 0.046, 0.054), ind_mean_abs_delta=(0.0025, 0.002, 0.003),
                 mean_delta=(0.05, 0.046, 0.054), ind_mean_delta=(0.002, 0.001, 0.003))
    assert meters_disagree(issue) == "x20"
    close = _row(mean_abs_delta=(0.006, 0.004, 0.008), ind_mean_abs_delta=(0.002, 0.0015, 0.003),
                 mean_delta=(0.006, 0.004, 0.008), ind_mean_delta=(0.002, 0.001, 0.003))
    assert meters_disagree(close) is None  # x3 apart, but their CIs are not
    signs = _row(mean_abs_delta=(0.01, 0.008, 0.012), ind_mean_abs_delta=(0.01, 0.008, 0.012),
                 mean_delta=(0.01, 0.008, 0.012), ind_mean_delta=(-0.01, -0.012, -0.008))
    assert meters_disagree(signs) == "opposite signs"
    unresolved = _row(mean_abs_delta=(0.01, 0.008, 0.012), ind_mean_abs_delta=(0.01, 0.008, 0.012),
                      mean_delta=(0.01, 0.008, 0.012), ind_mean_delta=(-0.01, -0.03, 0.01))
    assert meters_disagree(unresolved) is None


def test_sample_checks_nag_by_default_and_records_the_decision(tmp_path):
    import json

    from typer.testing import CliRunner

    from noiseshift.cli import app
    from noiseshift.models import save_model
    from noiseshift.training import train_denoiser

    data = make_gmm(dim=32, components=4, seed=0, n=512)
    model = train_denoiser(data, "linear", steps=10, batch_size=32, width=32, depth=1,
                           conditional=False, ema_decay=None)
    path = str(save_model(model, tmp_path / "m.pt"))
    base = ["sample", "--model", path, "--n", "16", "--steps", "3", "--nag-scale", "1.5",
            "--estimator", "oracle", "--record", str(tmp_path / "t.h5"), "--json"]
    res = CliRunner().invoke(app, base)
    if res.exit_code == 2:  # stopped: one line saying why
        assert "safety: stopped NAG" in res.output and "--no-safety" in res.output
    else:
        check = json.loads(res.stdout)["guidance"]["safety"]
        assert check["meter"] == "variance"  # the mixture's oracle guides: not it
        assert check["pilot_n"] == 16 and check["readings"][0]["scale"] == 1.5
    off = json.loads(CliRunner().invoke(app, base + ["--no-safety"]).stdout)
    assert "safety" not in off["guidance"] and off["run"] == "nag-estimator-step-1.5"


def test_samples_that_blow_up_are_harm_even_where_the_meter_saturates():
    from noiseshift.analysis.safety import _reading

    d = np.random.default_rng(0).normal(0.01, 0.02, size=(8, 32))
    rms = np.random.default_rng(1).uniform(0.6, 0.8, size=32)
    same = _reading(1.0, (d, rms, 3.0), (d, rms, 3.0), 1.5, 0)
    assert not same["harm"] and same["ratio"] == pytest.approx(1.0)
    one = _reading(1.0, (d, rms, 33.0), (d, rms, 3.0), 1.5, 0)  # one sample blew up
    assert one["harm"] and one["peak_ratio"] == pytest.approx(11.0)
    big = _reading(1.0, (d, 5 * rms, 15.0), (d, rms, 3.0), 1.5, 0)
    assert big["harm"] and big["rms_ratio"] == pytest.approx(5.0) and big["rms_lo"] > 1.5
    line = safety_message({"action": "stopped", "asked": 1.0, "scale": None, "meter": "m",
                           "pilot_n": 32, "factor": 1.5, "readings": [big]})
    assert "samples x5.0 in size" in line
