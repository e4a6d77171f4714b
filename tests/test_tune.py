"""`noiseshift tune`: budgets, the successive-halving plan and its choices on a scorer with
a known answer, paired samples across candidates, and the command end to end."""

import json
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import cli_exit_2
from typer.testing import CliRunner

from noiseshift.analysis.statistics import Estimate
from noiseshift.cli import app
from noiseshift.data import make_gmm
from noiseshift.data.mixture import MixtureDenoiser
from noiseshift.errors import NoiseshiftError
from noiseshift.pretrained import independent_meter
from noiseshift.tuning import CANDIDATES, Candidate, rungs, search, tune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_candidate_takes_the_most_steps_its_budget_allows():
    for budget in (1, 5, 16, 25):
        for c in CANDIDATES:
            steps = c.steps_for(budget)
            if steps is None:
                assert c.model_evals(1) > budget
                continue
            assert c.model_evals(steps) <= budget < c.model_evals(steps + 1)
    heun = Candidate("h", "heun")
    assert heun.steps_for(16) == 8 and heun.model_evals(8) == 15  # its last step is 1 call
    corr = Candidate("c", "dpmpp-2m", guidance={"corrector": (0.3, 2)})
    assert corr.model_evals(6) == 6 + 2 * 5 and corr.steps_for(16) == 6  # no moves after the last
    assert Candidate("cf", guidance={"nag_mode": "cf", "nag_scale": 1}, evals=2
                     ).steps_for(16) == 8
    assert Candidate("e", "euler").steps_for(16) == 16


def test_flags_are_the_sample_command_line():
    c = Candidate("x", "euler-maruyama", {"diffusion": 1.0},
                  {"nag_mode": "estimator-step", "nag_scale": 1.5, "time_shift": (0.1, 0.3),
                   "interval": (0.0, 0.8)})
    assert c.flags(12) == ["--sampler", "euler-maruyama", "--steps", "12", "--diffusion", "1",
                           "--nag-mode", "estimator-step", "--nag-scale", "1.5",
                           "--time-shift", "0.1,0.3", "--guidance-interval", "0,0.8"]


def test_the_plan_doubles_n_and_keeps_a_share():
    assert rungs(16, 128, 1024, 1 / 3, 2) == [(128, 16), (256, 6), (512, 2), (1024, 2)]
    assert rungs(7, 8, 32, 0.5, 1) == [(8, 7), (16, 4), (32, 2)]
    assert rungs(3, 64, 64, 1.0, 2) == [(64, 3)]  # the full grid
    with pytest.raises(NoiseshiftError):
        rungs(3, 64, 32, 0.5, 1)


#: The fake scorer's FD per candidate (the baseline 'c0' is worst); the known answer: the
#: best four (1, 2, 3, 4) reach rung 1, the best two (1, 2) the final rung.
FAKE_FD = {"c0": 10.0, "c1": 5.0, "c2": 3.0, "c3": 7.0, "c4": 1.0, "c5": 6.0, "c6": 2.0,
           "c7": 4.0}


def _est(v):
    return Estimate(v, v - 0.5, v + 0.5)


def test_successive_halving_keeps_the_best_on_a_known_scorer(monkeypatch):
    calls = []

    def fake_draw(d, ctx, seed, lo, hi):
        calls.append((d.candidate.name, seed, lo, hi))
        d.feats[seed].append(np.zeros((hi - lo, 1)))
        d.samples += hi - lo

    def fake_score(d, base, ctx):
        fd = FAKE_FD[d.candidate.name]
        same = d is base
        return {"fd": _est(fd), "dfd": None if same else _est(fd - FAKE_FD["c0"]),
                "precision": _est(0.5), "recall": _est(0.5), "drecall": None, "shift": None,
                "model_evals": 1.0, "s_per_sample": 0.0, "s_per_step": 0.0}

    monkeypatch.setattr(search, "draw", fake_draw)
    monkeypatch.setattr(search, "point_fd", lambda d, ctx: FAKE_FD[d.candidate.name])
    monkeypatch.setattr(search, "score", fake_score)
    cands = [Candidate(name, "euler") for name in FAKE_FD]
    model = SimpleNamespace(schedule=None, supports_null_t=False)
    res = tune(model, 4, None, seeds=(0, 3), candidates=cands, n_start=8, n_final=32,
               keep=0.5, finalists=1, meter=None, space=SimpleNamespace(label="fake"),
               device="cpu")
    reached = {r.name: (r.rung, r.n) for r in res.rows}
    assert reached == {"c0": (2, 64), "c4": (2, 64), "c6": (2, 64), "c2": (1, 32),
                       "c7": (1, 32), "c1": (0, 16), "c3": (0, 16), "c5": (0, 16)}
    assert res.recommended.name == "c4" and res.best.name == "c4"
    # the recommendation is the best finalist whose FD change is resolved below zero
    row = {r.name: r for r in res.rows}
    row["c4"].dfd = Estimate(-9.0, -20.0, +2.0)
    assert res.best.name == "c4" and res.recommended.name == "c6"
    row["c6"].dfd = Estimate(-8.0, -20.0, +2.0)
    assert res.recommended.name == "c0"  # nothing resolved: keep the baseline
    assert res.command() == "noiseshift sample --sampler euler --steps 4"
    # every candidate draws the same seeds and the same samples: 0..n, in order
    for name in FAKE_FD:
        mine = [c[1:] for c in calls if c[0] == name]
        for seed in (0, 3):
            ranges = [(lo, hi) for s, lo, hi in mine if s == seed]
            assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(ranges))
    # both seeds; the baseline rides along: 8 x 8, then 5 x 8 more, then 3 x 16 more
    assert res.samples == 2 * (8 * 8 + 5 * 8 + 3 * 16)


def _gmm():
    data = make_gmm(dim=8, components=3, seed=0, n=256)
    return data, MixtureDenoiser(data.mixture, "linear")


def test_halving_draws_the_grids_samples_and_meets_the_budget():
    data, model = _gmm()
    cands = (Candidate("em", "euler-maruyama"), Candidate("euler", "euler"),
             Candidate("heun", "heun"), Candidate("ddim1", "ddim", {"eta": 1.0}))
    meter = independent_meter(data, model.schedule)  # fitted once for both searches
    kw = dict(seeds=(1,), candidates=cands, n_final=32, n_boot=20, device="cpu", meter=meter)
    sh = tune(model, 5, data, n_start=16, keep=0.3, finalists=1, **kw)
    grid = tune(model, 5, data, n_start=32, keep=1.0, **kw)
    assert len(grid.rows) == 4 and all(r.n == 32 for r in grid.rows)
    by_name = {r.name: r for r in grid.rows}
    for r in sh.rows:
        assert r.model_evals == r.candidate.model_evals(r.steps) <= 5  # counted calls
        if r.n == 32:  # a finalist's samples are the grid's: the same FD to the last bit
            assert r.fd.value == by_name[r.name].fd.value
    assert {r.name: r.steps for r in sh.rows} == {"em": 5, "euler": 5, "heun": 3, "ddim1": 5}
    assert all(r.model_evals == r.candidate.model_evals(r.steps) for r in grid.rows)
    assert sh.samples < grid.samples
    assert sh.baseline.shift is not None and sh.meter == "oracle"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "gmm.pt"
    res = CliRunner().invoke(app, ["train", "--data", "gmm", "--dim", "8", "--steps", "20",
                                   "--batch-size", "32", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_tune_json_end_to_end(tiny_model, tmp_path):
    fig = tmp_path / "tune.png"
    res = CliRunner().invoke(app, ["tune", "--model", str(tiny_model), "--budget", "3",
                                   "--n-start", "8", "--n-final", "16", "--seeds", "0,1",
                                   "--estimator", "oracle", "--bootstrap", "20",
                                   "--candidates", "heun,em+step1.5,euler,em+cfcal0.5",
                                   "--plot", str(fig), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    names = [r["name"] for r in out["rows"]]
    assert sorted(names) == ["em", "em+cfcal0.5", "em+step1.5", "euler", "heun"]
    assert out["recommended"] in names and out["command"].startswith("noiseshift sample")
    assert str(tiny_model) in out["command"] and fig.exists()
    assert all(r["model_evals"] <= 3 for r in out["rows"])
    assert max(r["n"] for r in out["rows"]) == 32  # 16 per seed, two seeds


@pytest.mark.parametrize("args, says", [
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "1,1"], "distinct"),
    (["--n-start", "256", "--n-final", "128"], "--n-start"),
    (["--model", "diffusers:/nowhere"], "diffusers"),
    (["--candidates", "heun,nope"], "nope"),
])
def test_bad_input_is_one_line_exit_2(args, says, capsys):
    lines = cli_exit_2(["tune", *args], capsys)
    assert len(lines) == 1 and says in lines[0]


def test_the_table_reads_at_80_columns():
    import io

    from rich.console import Console

    from noiseshift.tuning.result import Row, TuneResult
    from noiseshift.tuning.show import tune_table

    e = Estimate(0.0155, 0.01, 0.02)
    rows = [Row(c, 16, 3, 1024, Estimate(12.34, 1, 20),
                None if i == 0 else Estimate(0.85, -8.52, 10.85), e, e, None, e, 16.0, 0.01,
                0.00898) for i, c in enumerate(CANDIDATES)]
    res = TuneResult(rows=rows, budget=16, seeds=(0,), plan=[], meter="subspace",
                     space="digits classifier penultimate features (64-d, noiseshift's own)")
    console = Console(width=80, file=io.StringIO())
    console.print(tune_table(res))
    text = console.file.getvalue()
    assert "+0.85 [-8.52,+10.85]" in text and "em-g0.5+step1.5 " in text and "8.98" in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80


def test_a_corrector_candidate_costs_what_it_is_counted():
    data, model = _gmm()
    cands = (Candidate("em", "euler-maruyama"),
             Candidate("corr", "dpmpp-2m", guidance={"corrector": (0.2, 2)}),
             Candidate("dcw", "euler", guidance={"dcw": -0.01, "dcw_form": "pixel"}))
    res = tune(model, 9, data, seeds=(0,), candidates=cands, n_start=16, n_final=16,
               keep=1.0, n_boot=10, device="cpu",
               meter=independent_meter(data, model.schedule))
    by_name = {r.name: r for r in res.rows}
    assert by_name["corr"].steps == 3 and by_name["corr"].model_evals == 3 + 2 * 2
    assert by_name["dcw"].model_evals == 9
    assert "--corrector 0.2,2" in " ".join(cands[1].flags(4))
