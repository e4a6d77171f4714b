"""The bad-input corpus through the command line (issue 7, part 1).

Every case is run through `inspect`, `estimate` and `report` and must give exactly one line on
stderr that names the file and the problem, exit code 2, no traceback, and leave every input
file byte for byte as it was. Most cases run in-process through the real entry point
`noiseshift.cli:main`; a few run the installed `noiseshift` executable.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from make_bad_corpus import build, checkpoints, tiny_model, write_good
from test_cli_inspect import cli

from noiseshift.errors import TrajectoryError
from noiseshift.io import open_trajectories, write_estimates

NOISESHIFT = Path(sys.executable).with_name("noiseshift")
BAD = ["not_hdf5", "empty", "truncated_superblock", "truncated_half", "truncated_tail",
       "plain_hdf5", "wrong_format", "future_version", "no_runs", "missing_t", "missing_states",
       "t_not_decreasing", "t_outside", "length_mismatch", "nan_states", "inf_states",
       "nan_x0_pred", "nan_samples", "int_states", "complex_states", "zero_samples", "bad_json",
       "unknown_schedule", "missing_complete", "no_samples", "float_labels", "external_link"]
# estimate never reads x0_pred or samples, report never x0_pred: a NaN there is not theirs.
READ_STATES = [n for n in BAD if n not in ("nan_x0_pred", "nan_samples")]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else ""


def fake_estimates(traj: Path, out: Path) -> Path:
    """An estimates file matching `traj` (readings made up: only matching matters)."""
    with open_trajectories(traj) as tf:
        r = tf.run(tf.runs[0])
        s, n, name = r.num_steps, r.n, r.name
    write_estimates(out, traj, [{"run": name, "estimator": "oracle", "identity": {},
                                 "calibration": {}, "reference": np.linspace(0.9, 0.1, s),
                                 "t_hat": np.full((s, n), 0.5), "t_std": np.full((s, n), 0.1)}])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    cases = build(folder)
    ckpt = checkpoints(folder / "ckpt")
    est = {}
    (folder / "ests").mkdir()
    good_est = fake_estimates(cases["good"][0], folder / "ests" / "good.estimates.h5")
    for name, (path, _) in cases.items():
        try:  # files that open structurally get estimates of their own, so that `report`
            est[name] = fake_estimates(path, folder / "ests" / f"{name}.estimates.h5")
        except TrajectoryError:  # gets past the fingerprint check to the values
            est[name] = good_est
    other = write_good(folder / "other.h5", seed=1)
    return {"cases": cases, "ckpt": ckpt, "est": est, "other": other, "folder": folder}


def check_error(code, err, files, expect: str, named: Path) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("error: ") and str(named) in err, err
    assert re.search(expect, err), (expect, err)


def run_checked(capsys, monkeypatch, args, files, expect, named):
    before = {f: digest(f) for f in files}
    code, _, err = cli(capsys, monkeypatch, *args)
    check_error(code, err, files, expect, named)
    assert {f: digest(f) for f in files} == before, "an input file changed"


# -- the trajectory cases through every command that reads trajectories ------------------------

@pytest.mark.parametrize("name", BAD)
def test_inspect(corpus, capsys, monkeypatch, name):
    path, case = corpus["cases"][name]
    run_checked(capsys, monkeypatch, ["inspect", path], [path], case.expect, path)


@pytest.mark.parametrize("name", READ_STATES)
def test_estimate(corpus, capsys, monkeypatch, tmp_path, name):
    path, case = corpus["cases"][name]
    out = tmp_path / "est.h5"
    run_checked(capsys, monkeypatch, ["estimate", path, "-e", corpus["ckpt"]["oracle"], "-o",
                                      out, "--device", "cpu"], [path], case.expect, path)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("name", READ_STATES + ["nan_samples"])
def test_report(corpus, capsys, monkeypatch, tmp_path, name):
    path, case = corpus["cases"][name]
    est = corpus["est"][name]
    run_checked(capsys, monkeypatch, ["report", path, "--estimates", est, "--out",
                                      tmp_path / "rep", "--no-quality", "--bootstrap", "20"],
                [path, est], case.expect, path)


# -- cases that need a second input ---------------------------------------------------------

def test_shape_that_does_not_match_the_estimator(corpus, capsys, monkeypatch, tmp_path):
    path, _ = corpus["cases"]["shape_mismatch"]
    code, _, _ = cli(capsys, monkeypatch, "inspect", path)
    assert code == 0  # the file itself is valid
    run_checked(capsys, monkeypatch, ["estimate", path, "-e", corpus["ckpt"]["oracle"], "-o",
                                      tmp_path / "e.h5"], [path],
                r"states of shape \(9,\).*reads \(8,\)", path)


def test_run_that_does_not_exist(corpus, capsys, monkeypatch, tmp_path):
    good = corpus["cases"]["good"][0]
    run_checked(capsys, monkeypatch, ["estimate", good, "-e", corpus["ckpt"]["oracle"], "--run",
                                      "nag", "-o", tmp_path / "e.h5"], [good],
                r"no run 'nag' in this file; it has 'baseline'", good)


def test_report_baseline_that_does_not_exist(corpus, capsys, monkeypatch, tmp_path):
    good = corpus["cases"]["good"][0]
    est = corpus["est"]["good"]
    run_checked(capsys, monkeypatch, ["report", good, "--estimates", est, "--baseline", "nag",
                                      "--out", tmp_path / "rep", "--no-quality"], [good, est],
                r"'nag'", good)


def test_estimates_of_another_trajectory_file(corpus, capsys, monkeypatch, tmp_path):
    other = corpus["other"]
    est = corpus["est"]["good"]
    run_checked(capsys, monkeypatch, ["report", other, "--estimates", est, "--out",
                                      tmp_path / "rep", "--no-quality"], [other, est],
                r"estimates were made from a different trajectory file", est)


def test_estimates_file_where_trajectories_belong(corpus, capsys, monkeypatch, tmp_path):
    est = corpus["est"]["good"]
    run_checked(capsys, monkeypatch, ["estimate", est, "-e", corpus["ckpt"]["oracle"], "-o",
                                      tmp_path / "e.h5"], [est],
                r"estimates file, not a trajectory file", est)


@pytest.mark.parametrize("which, expect", [
    ("not_checkpoint", r"not a noiseshift (estimator )?checkpoint"),
    ("other_schedule", r"linear schedule, but the oracle estimator is for vp-cosine"),
])
def test_estimator_checkpoints(corpus, capsys, monkeypatch, tmp_path, which, expect):
    good = corpus["cases"]["good"][0]
    ckpt = corpus["ckpt"][which]
    named = ckpt if which == "not_checkpoint" else good
    run_checked(capsys, monkeypatch, ["estimate", good, "-e", ckpt, "-o", tmp_path / "e.h5"],
                [good, ckpt], expect, named)


def test_model_checkpoint_that_is_not_one(corpus, capsys, monkeypatch, tmp_path):
    ckpt = corpus["ckpt"]["not_checkpoint"]
    run_checked(capsys, monkeypatch, ["sample", "--model", ckpt, "--n", "4", "--steps", "2",
                                      "--record", tmp_path / "t.h5"], [ckpt],
                r"not a noiseshift checkpoint", ckpt)
    assert not (tmp_path / "t.h5").exists()


def test_record_into_a_file_that_is_not_a_trajectory_file(tmp_path, capsys, monkeypatch):
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    model = tiny_model(tmp_path)
    run_checked(capsys, monkeypatch, ["sample", "--n", "2", "--steps", "1", "--record", notes,
                                      "--model", model, "--run", "r"], [notes],
                r"not an HDF5 file", notes)


@pytest.mark.parametrize("command", ["inspect", "estimate", "report"])
def test_missing_file_and_folder(corpus, capsys, monkeypatch, tmp_path, command):
    extra = {"inspect": [], "estimate": ["-e", corpus["ckpt"]["oracle"]],
             "report": ["--estimates", corpus["est"]["good"], "--no-quality"]}[command]
    missing = tmp_path / "missing.h5"
    run_checked(capsys, monkeypatch, [command, missing, *extra], [], r"no such (trajectory )?"
                r"file", missing)
    run_checked(capsys, monkeypatch, [command, tmp_path, *extra], [], r"folder|directory",
                tmp_path)


# -- the installed executable --------------------------------------------------------------------

@pytest.mark.slow
def test_real_entry_point(corpus, tmp_path):
    """The console script, for one case per command: one line, exit 2, bytes unchanged."""
    cases = corpus["cases"]
    runs = [
        (["inspect", cases["truncated_half"][0]], cases["truncated_half"]),
        (["estimate", cases["nan_states"][0], "-e", corpus["ckpt"]["oracle"], "-o",
          tmp_path / "e.h5"], cases["nan_states"]),
        (["report", cases["t_not_decreasing"][0], "--estimates", corpus["est"]["good"],
          "--out", tmp_path / "rep"], cases["t_not_decreasing"]),
    ]
    for args, (path, case) in runs:
        before = digest(path)
        p = subprocess.run([str(NOISESHIFT), *map(str, args)], capture_output=True, text=True,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                "NOISESHIFT_CACHE": str(tmp_path / "cache")}, timeout=300)
        check_error(p.returncode, p.stderr, [path], case.expect, path)
        assert digest(path) == before
