"""`noiseshift demo --quick` end to end: every stage runs and its outputs exist and parse."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.demo import DEFAULT_NAG, QUICK_RUNS, RUNS, DemoSettings
from noiseshift.errors import NoiseshiftError
from noiseshift.guidance import DEFAULT_NAG_MODE, NAG_MODES
from noiseshift.io import open_estimates, open_trajectories, validate


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)

    traj = out / "trajectories.h5"
    summary = validate(traj)
    assert summary is not None
    with open_trajectories(traj) as f:
        assert len(f.runs) == len(QUICK_RUNS) and "unguided" in f.runs
        assert f"nag-{DEFAULT_NAG_MODE}-1.5" in f.runs
        run = f.run("unguided")
        assert run.complete and run.num_steps == 8 and run.n == 128
    with open_estimates(out / "trajectories.estimates.h5") as e:
        assert e is not None

    report = out / "report"
    for name in ("report.md", "summary.csv", "steps.csv", "t_prime.png", "delta.png"):
        assert (report / name).stat().st_size > 0, name
    table = pd.read_csv(report / "summary.csv")
    assert set(table["run"]) == set(payload["summary"][i]["run"] for i in range(len(table)))
    assert table["mean_delta"].notna().all() and table["fd"].notna().all()
    assert "delta.png" in (report / "report.md").read_text()
    assert payload["probe"]["verdict"]
    assert payload["timings"]["total"] > 0


def test_demo_refuses_other_data():
    with pytest.raises(NoiseshiftError):
        DemoSettings.make("cifar10")


def test_demo_runs_the_library_default():
    assert DEFAULT_NAG == {"nag_scale": 1.5, "nag_mode": DEFAULT_NAG_MODE}
    assert DEFAULT_NAG in RUNS and DEFAULT_NAG in QUICK_RUNS
    assert all(r["nag_mode"] in NAG_MODES for r in RUNS if "nag_mode" in r)
