"""`noiseshift inspect`: tables, JSON, estimates files, one-line errors."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
from make_bad_corpus import write_good

from noiseshift.cli import main
from noiseshift.io import TrajectoryWriter, estimates_path, write_estimates


def cli(capsys, monkeypatch, *args):
    """Run the real console entry point in-process; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["noiseshift", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def two_runs(path):
    write_good(path, run="baseline")
    with TrajectoryWriter(path, "nag-1.5", n=3, shape=(8,), schedule="vp-cosine",
                          sampler={"name": "euler-maruyama", "steps": 4},
                          guidance={"kind": "nag", "scale": 1.5}, seed=7) as w:
        for i in range(2):
            w.callback({"i": i, "t": 1 - i / 4, "x": np.zeros((3, 8)), "x0_pred": None})
    return path


def test_table_lists_runs_and_flags_incomplete(tmp_path, capsys, monkeypatch):
    p = two_runs(tmp_path / "traj.h5")
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = cli(capsys, monkeypatch, "inspect", p)
    assert code == 0 and err == ""
    lines = out.splitlines()
    base = next(x for x in lines if "baseline" in x)
    nag = next(x for x in lines if "nag-1.5" in x)
    for word in ("5", "4", "linear", "euler", "complete"):
        assert word in base
    for word in ("2", "3", "vp-cosine", "euler-maruyama", "nag", "scale=1.5", "7",
                 "INCOMPLETE"):
        assert word in nag
    assert "valid noiseshift.trajectories v1" in out and "every state finite" in out


def test_json(tmp_path, capsys, monkeypatch):
    p = two_runs(tmp_path / "traj.h5")
    code, out, _ = cli(capsys, monkeypatch, "inspect", p, "--json")
    assert code == 0
    s = json.loads(out)
    runs = {r["name"]: r for r in s["runs"]}
    assert s["valid"] and s["kind"] == "trajectories" and s["version"] == 1
    assert runs["baseline"]["complete"] and not runs["nag-1.5"]["complete"]
    assert runs["nag-1.5"]["steps"] == 2 and runs["nag-1.5"]["shape"] == [8]
    assert runs["nag-1.5"]["guidance"] == {"kind": "nag", "scale": 1.5}


def test_quick_skips_the_value_scan(tmp_path, capsys, monkeypatch):
    p = write_good(tmp_path / "nan.h5", mutate=lambda g, a: a["states"].__setitem__(
        (1, 1, 1), np.inf))
    code, out, _ = cli(capsys, monkeypatch, "inspect", p, "--quick")
    assert code == 0 and "--quick" in out
    code, _, err = cli(capsys, monkeypatch, "inspect", p)
    assert code == 2 and "NaN or Inf at step 1" in err


def test_estimates_file(tmp_path, capsys, monkeypatch):
    p = write_good(tmp_path / "traj.h5")
    out_path = estimates_path(p)
    t_hat = np.full((5, 4), 0.5)
    write_estimates(out_path, p, [{"run": "baseline", "estimator": "oracle",
                                   "identity": {"name": "oracle"}, "calibration": {},
                                   "reference": np.full(5, 0.4), "t_hat": t_hat,
                                   "t_std": t_hat * 0.1}])
    code, out, _ = cli(capsys, monkeypatch, "inspect", out_path)
    assert code == 0 and "estimates" in out and "oracle" in out and "+0.1000" in out
    code, out, _ = cli(capsys, monkeypatch, "inspect", out_path, "--json")
    s = json.loads(out)
    assert s["kind"] == "estimates" and abs(s["runs"][0]["mean_delta"] - 0.1) < 1e-6


def test_bad_file_one_line_exit_2(tmp_path, capsys, monkeypatch):
    p = tmp_path / "notes.h5"
    p.write_text("hello")
    code, out, err = cli(capsys, monkeypatch, "inspect", p)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and str(p) in err
    assert "not an HDF5 file" in err
    code, _, err = cli(capsys, monkeypatch, "inspect", tmp_path / "missing.h5", "--json")
    assert code == 2 and "no such file" in err and err.count("\n") == 1


LONG_NAMES = ("nag-estimator-step-1.5", "nag-estimator-noise-4", "nag-estimator-0.5")


def test_long_run_names_read_at_any_width(tmp_path, capsys, monkeypatch):
    """No cell is cut at 80, 100 or 200 columns: every run name and its status whole on one
    line, every setting in full, no line past the width."""
    p = tmp_path / "traj.h5"
    for k, name in enumerate(LONG_NAMES):
        guidance = {"kind": name, "nag": {"mode": name[4:].rsplit("-", 1)[0],
                                          "scale": float(name.rsplit("-", 1)[1]),
                                          "interval": [0.0, 0.8]}}
        with TrajectoryWriter(p, name, n=3, shape=(1, 4, 4), schedule="linear",
                              sampler={"name": "euler-maruyama", "steps": 2, "diffusion": 2.0,
                                       "final_denoise": True, "t_max": 1.0, "t_min": 0.0},
                              guidance=guidance, seed=k) as w:
            for i in range(2):
                w.callback({"i": i, "t": 1 - i / 2, "x": np.zeros((3, 1, 4, 4))})
            w.finish(np.zeros((3, 1, 4, 4)))
    for width in (80, 100, 200):
        monkeypatch.setenv("COLUMNS", str(width))
        code, out, _ = cli(capsys, monkeypatch, "inspect", p)
        assert code == 0 and "…" not in out
        lines = out.splitlines()
        assert max(map(len, lines)) <= width, out
        for name in LONG_NAMES:
            row = next(x for x in lines if f" {name} " in x and "complete" in x)
            assert row.split()[0] == name, row
            assert "interval=[0, 0.8]" in out and "final_denoise=True" in out
        flat = " ".join(out.split())
        for name in LONG_NAMES:
            assert f"{name} (nag={{interval=[0, 0.8], mode=" in flat, out
        est = estimates_path(p)
        if not est.exists():
            write_estimates(est, p, [{"run": name, "estimator": "oracle", "identity": {},
                                      "calibration": {}, "reference": np.full(2, 0.4),
                                      "t_hat": np.full((2, 3), 0.5),
                                      "t_std": np.full((2, 3), 0.1)} for name in LONG_NAMES])
        code, out, _ = cli(capsys, monkeypatch, "inspect", est)
        assert code == 0 and "…" not in out and max(map(len, out.splitlines())) <= width
        for name in LONG_NAMES:
            assert any(x.split()[:2] == [name, "oracle"] for x in out.splitlines()), out


def test_estimates_without_samples_is_one_line(tmp_path, capsys, monkeypatch):
    """An estimates run with N = 0 is refused when read, not summarised as a mean of
    nothing (numpy's "Mean of empty slice" warning, seen while fuzzing)."""
    p = write_good(tmp_path / "traj.h5")
    out_path = estimates_path(p)
    t_hat = np.full((5, 4), 0.5)
    write_estimates(out_path, p, [{"run": "baseline", "estimator": "oracle",
                                   "identity": {"name": "oracle"}, "calibration": {},
                                   "reference": np.full(5, 0.4), "t_hat": t_hat,
                                   "t_std": t_hat}])
    with h5py.File(out_path, "r+") as f:
        g = f["runs/baseline/oracle"]
        for key in ("t_hat", "t_std"):
            del g[key]
            g.create_dataset(key, data=np.zeros((5, 0), np.float32))
    code, out, err = cli(capsys, monkeypatch, "inspect", out_path)
    assert code == 2 and out == "" and "no samples (N = 0)" in err and err.count("\n") == 1
