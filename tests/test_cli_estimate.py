import hashlib
import json
import sys

import numpy as np
import pytest
import torch

from noiseshift import pretrained
from noiseshift.cli import main
from noiseshift.data import load_digits, make_gmm
from noiseshift.estimation import estimate_file, summarize_estimates
from noiseshift.estimators import (
    ExactOracle,
    LearnedEstimator,
    NoiseLevelEstimator,
    forward_noise,
)
from noiseshift.io import TrajectoryWriter, open_estimates
from noiseshift.runtime import generator
from noiseshift.schedules import get_schedule

TS = [0.9, 0.7, 0.5, 0.3, 0.1]
DIGITS = {"name": "digits", "side": 16}


def cli(capsys, monkeypatch, *args):
    """Run the real console entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["noiseshift", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def record(path, run, data, schedule="linear", extra_noise=0.0, n=48, seed=0, spec=DIGITS):
    """A run whose states are true forward-noised data at TS, plus extra white noise."""
    sch = get_schedule(schedule)
    g = generator(seed)
    x0 = data.x[torch.randint(len(data), (n,), generator=g)]
    with TrajectoryWriter(path, run, n=n, shape=data.shape, schedule=sch,
                          sampler={"name": "test", "steps": len(TS)},
                          model={"kind": "test", "data": spec}, seed=seed) as w:
        for i, t in enumerate(TS):
            x = forward_noise(x0, torch.full((n,), t, dtype=torch.float64), sch, g)
            w.callback({"i": i, "t": t, "x": x + extra_noise * torch.randn(x.shape, generator=g)})
        w.finish(x0)
    return path


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


@pytest.fixture
def traj(tmp_path, digits):
    path = tmp_path / "traj.h5"
    record(path, "clean", digits)
    record(path, "noisy", digits, extra_noise=0.1, seed=1)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_estimate_subspace_reads_zero_shift_on_schedule_and_the_injected_noise(
        traj, capsys, monkeypatch):
    before = _digest(traj)
    code, out, err = cli(capsys, monkeypatch, "estimate", traj, "--estimator", "subspace",
                         "--json")
    assert code == 0, err
    assert _digest(traj) == before  # the input is never modified
    res = json.loads(out)
    by_run = {r["run"]: r for r in res["results"]}
    assert set(by_run) == {"clean", "noisy"}
    clean, noisy = by_run["clean"]["steps"], by_run["noisy"]["steps"]
    assert [r["t"] for r in clean] == pytest.approx(TS)
    for rec in clean:
        assert abs(rec["delta"]) < 0.015
        assert rec["ci_low"] < rec["delta"] < rec["ci_high"] and rec["blind"] is False
    # Extra noise of std 0.1: the exact inversion gives t' = sqrt(t^2 + 0.01) under linear.
    for rec in noisy:
        want = np.hypot(rec["t"], 0.1) - rec["t"]
        assert rec["delta"] == pytest.approx(want, abs=0.012)
    # The estimates file: (S, N) readings and the reference, readable by the library.
    with open_estimates(res["estimates"]) as ef:
        e = ef.get("noisy", "subspace")
        assert e.t_hat.shape == (5, 48) and e.reference.shape == (5,)
        assert e.estimator["name"] == "subspace" and "isotonic_x" in e.calibration
        assert summarize_estimates(e)[0]["delta"] == pytest.approx(noisy[0]["delta"], abs=1e-5)
        ef.check_matches(traj)


def test_estimate_keeps_other_estimators_and_prints_tables(traj, tmp_path, capsys,
                                                           monkeypatch):
    out_path = tmp_path / "est.h5"
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "subspace", "--out",
                       out_path)
    assert code == 0, err
    code, out, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "wavelet", "--run",
                         "noisy", "--out", out_path)
    assert code == 0, err
    assert "run 'noisy': wavelet estimator" in out and "95% CI" in out
    assert "kept" in out and "clean/subspace" in out
    with open_estimates(out_path) as ef:
        assert sorted(ef.estimators("noisy")) == ["subspace", "wavelet"]
        assert ef.estimators("clean") == ["subspace"]


def test_streaming_chunks_give_the_same_readings(traj, tmp_path):
    a = estimate_file(traj, "subspace", out=tmp_path / "a.h5")
    b = estimate_file(traj, "subspace", out=tmp_path / "b.h5", max_bytes=1024 * 5)
    with open_estimates(a.path) as ea, open_estimates(b.path) as eb:
        assert np.array_equal(ea.get("noisy", "subspace").t_hat, eb.get("noisy", "subspace").t_hat)
    for ra, rb in zip(a.results[1].records, b.results[1].records, strict=True):
        assert ra == pytest.approx(rb, rel=1e-9, abs=1e-12)


def test_estimate_errors_are_one_line_exit_2(traj, tmp_path, capsys, monkeypatch, digits):
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "subspace", "--run", "nope")
    assert code == 2 and "no run 'nope'" in err and "Traceback" not in err
    # Shape mismatch: an estimator for 8-d vectors on 16x16 images.
    gmm = make_gmm(dim=8, components=2, n=128)
    est_path = ExactOracle(calib_samples=8).fit(gmm, "linear").save(tmp_path / "o.pt")
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", est_path)
    assert code == 2 and "shape" in err and len(err.splitlines()) == 1
    # Schedule mismatch: a vp-cosine run read by an estimator fitted for linear.
    vp = record(tmp_path / "vp.h5", "vp", digits, schedule="vp-cosine")
    sub = saved_subspace(tmp_path)
    assert NoiseLevelEstimator.load(sub).schedule_.name == "linear"
    code, _, err = cli(capsys, monkeypatch, "estimate", vp, "-e", sub)
    assert code == 2 and "vp-cosine" in err and "linear" in err
    # --data with another shape than the run's, and a built-in that does not exist.
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "variance", "--data", "gmm")
    assert code == 2 and "(64,)" in err and "(1, 16, 16)" in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "variance", "--data", "cifar")
    assert code == 2 and "unknown built-in data 'cifar'" in err
    code, _, err = cli(capsys, monkeypatch, "estimate", tmp_path / "missing.h5")
    assert code == 2 and "no such file" in err
    code, _, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "magic")
    assert code == 2 and "unknown estimator" in err


def saved_subspace(tmp_path):
    """A saved subspace estimator for the linear schedule."""
    from noiseshift.estimators import SubspaceOracle

    est = SubspaceOracle(calib_samples=16).fit(load_digits(16), "linear")
    return est.save(tmp_path / "sub.pt")


def test_estimate_with_the_default_learned_estimator(traj, capsys, monkeypatch):
    # A tiny stand-in for the built-in estimator (trained on first use, then cached).
    monkeypatch.setitem(pretrained.DEFAULT_ESTIMATOR, "steps", 30)
    monkeypatch.setitem(pretrained.DEFAULT_ESTIMATOR, "calib_samples", 16)
    code, out, err = cli(capsys, monkeypatch, "estimate", traj, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert {r["estimator"] for r in res["results"]} == {"learned"}
    assert res["results"][0]["identity"]["data"] == DIGITS
    assert len(res["results"][0]["steps"]) == len(TS)
    assert pretrained.default_estimator_path().exists()


def test_train_estimator_command(tmp_path, capsys, monkeypatch):
    out_path = tmp_path / "est.pt"
    code, out, err = cli(capsys, monkeypatch, "train-estimator", "--data", "gmm", "--dim", "8",
                         "--steps", "30", "--bins", "16", "--eval-n", "256", "--out",
                         out_path, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res["accuracy"]["overall"]) == {"learned", "variance", "wavelet", "oracle"}
    assert len(res["accuracy"]["bands"]) == 5
    est = LearnedEstimator.load(out_path)
    assert est.bins == 16 and est.to_dict()["data"]["name"] == "gmm"
    code, out, err = cli(capsys, monkeypatch, "train-estimator", "--data", "gmm", "--dim", "8",
                         "--steps", "10", "--eval-n", "64", "--out", out_path)
    assert code == 0, err
    assert "Held-out MAE" in out and "[0.8, 1.0)" in out and "oracle" in out
    code, _, err = cli(capsys, monkeypatch, "train-estimator", "--data", "nope.npy", "--out",
                       out_path)
    assert code == 2 and "no such file" in err


def test_estimate_data_option_reads_a_file_that_names_no_data(tmp_path, digits, capsys,
                                                              monkeypatch):
    """A file written by another program, with no data in its model attribute: named
    estimators fail with a hint, and work with --data."""
    path = record(tmp_path / "other.h5", "clean", digits, spec=None)
    code, _, err = cli(capsys, monkeypatch, "estimate", path, "-e", "variance")
    assert code == 2 and "--data" in err
    code, out, err = cli(capsys, monkeypatch, "estimate", path, "-e", "variance", "-e",
                         "wavelet", "--data", "digits", "--json")
    assert code == 0, err
    kinds = {r["estimator"] for r in json.loads(out)["results"]}
    assert kinds == {"variance", "wavelet"}
