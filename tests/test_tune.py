"""`noiseshift tune`: budgets, the successive-halving plan and its choices on a scorer with
a known answer, paired samples across candidates, and the command end to end."""

import json
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import cli_exit_2, tune_table_text
from typer.testing import CliRunner

from noiseshift.analysis.quality import frechet_distance
from noiseshift.analysis.statistics import Estimate
from noiseshift.cli import app
from noiseshift.data import make_gmm
from noiseshift.data.mixture import MixtureDenoiser
from noiseshift.errors import NoiseshiftError
from noiseshift.pretrained import independent_meter
from noiseshift.tuning import CANDIDATES, Candidate, search, tune
from noiseshift.tuning.draws import Draws, fd_estimate, paired_spread
from noiseshift.tuning.result import Row, TuneResult
from noiseshift.tuning.show import verdict

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


def _synthetic(n_final=512, d=8, seed=0):
    """Paired features of three candidates against a N(0, I) reference: the baseline z + 2m
    (FD 4 |m|^2 = 1.6), a narrow one sqrt(0.5) z (FD d (1.5 - 2 sqrt(0.5)) = 0.69) and a
    shifted one z + m (FD |m|^2 = 0.4, the best). Sample i of each comes from the same z_i,
    as in tune."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((20000, d))
    z = rng.standard_normal((n_final, d))
    m = np.full(d, np.sqrt(0.4 / d))
    return ref, {"base": z + 2 * m, "narrow": np.sqrt(0.5) * z, "shifted": z + m}


def _draws(feats, n):
    out = {}
    for name, f in feats.items():
        d = Draws(Candidate(name), 1, (0,))
        d.feats[0].append(f[:n])
        out[name] = d
    return out


def _est(v):
    return Estimate(v, v - 0.5, v + 0.5)


def test_the_estimate_ranks_where_fd_at_few_samples_misranks():
    ref, feats = _synthetic()
    ctx = SimpleNamespace(space=SimpleNamespace(reference=ref), boot_seed=0)
    small, full = _draws(feats, 64), _draws(feats, 512)
    plain = {k: frechet_distance(d.features(), ref) for k, d in small.items()}
    assert plain["narrow"] < plain["shifted"]  # FD's bias at n = 64 favours the narrow one
    est = {k: fd_estimate(small[k], full["base"], ctx) for k in ("narrow", "shifted")}
    truth = {k: frechet_distance(d.features(), ref) for k, d in full.items()}
    assert est["shifted"].value < est["narrow"].value
    # the shifted one differs from the baseline by a constant: its estimate is exact
    assert est["shifted"].value == pytest.approx(truth["shifted"], abs=1e-9)
    assert est["narrow"].lo < truth["narrow"] < est["narrow"].hi
    assert paired_spread(small["shifted"], full["base"]) == pytest.approx(0.0, abs=1e-12)
    assert paired_spread(small["narrow"], full["base"]) > 0


def test_the_race_draws_the_best_estimate_and_stops(monkeypatch):
    ref, feats = _synthetic()
    calls = []

    def fake_draw(d, ctx, seed, lo, hi):
        calls.append((d.candidate.name, seed, lo, hi))
        d.feats[seed].append(feats[d.candidate.name][lo:hi])
        d.samples += hi - lo
        d.rows += hi - lo

    def fake_score(d, base, ctx):
        fd = frechet_distance(d.features(), ref)
        diff = fd - frechet_distance(base.features(d.n), ref)
        same = d is base
        return {"fd": _est(fd), "dfd": None if same else Estimate(diff, diff - .1, diff + .1),
                "precision": _est(0.5), "recall": _est(0.5), "drecall": None, "shift": None,
                "model_evals": 1.0, "s_per_sample": 0.0, "s_per_step": 0.0}

    monkeypatch.setattr(search, "draw", fake_draw)
    monkeypatch.setattr(search, "score", fake_score)
    cands = [Candidate(name, "euler") for name in feats]
    model = SimpleNamespace(schedule=None, supports_null_t=False)
    space = SimpleNamespace(label="fake", reference=ref)
    res = tune(model, 4, None, seeds=(0,), candidates=cands, n_start=64, n_final=512,
               share=0.9, meter=None, space=space, device="cpu")
    reached = {r.name: r.n for r in res.rows}
    # plain FD at 64 samples would race the narrow one; the estimate races the shifted one
    # first; then only the narrow one's CI reaches below its FD, and its draw would pass the
    # budget: the race stops
    assert reached == {"base": 512, "shifted": 512, "narrow": 64}
    assert res.recommended.name == "shifted" and res.plan == [(64, 2), (512, 1)]
    assert res.samples == 512 + 512 + 64 < 0.9 * 3 * 512
    narrow = {r.name: r for r in res.rows}["narrow"].estimate
    assert narrow.lo < {r.name: r for r in res.rows}["shifted"].fd.value < narrow.value
    # every candidate draws 0..n in order
    for name in feats:
        ranges = [(lo, hi) for c, s, lo, hi in calls if c == name]
        assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(ranges))
    # with the whole grid's budget, the one whose CI reaches below the best is drawn too
    res = tune(model, 4, None, seeds=(0,), candidates=cands, n_start=64, n_final=512,
               share=1.0, meter=None, space=space, device="cpu")
    assert {r.name: r.n for r in res.rows}["narrow"] == 512
    assert res.recommended.name == "shifted"
    # the share caps the race: with too little for one more draw, only the baseline is final
    res = tune(model, 4, None, seeds=(0,), candidates=cands, n_start=64, n_final=512,
               share=0.5, meter=None, space=space, device="cpu")
    assert {r.name: r.n for r in res.rows}["shifted"] == 64
    assert res.recommended.name == "base"
    with pytest.raises(NoiseshiftError):
        tune(model, 4, None, candidates=cands, share=0.0, meter=None, space=space)


def test_the_recommendation_is_the_best_resolved_finalist():
    rows = [Row(Candidate(f"c{i}"), 4, rung, 64, _est(fd), dfd, _est(.5), _est(.5), None,
                None, 1.0, 0.0, 0.0)
            for i, (rung, fd, dfd) in enumerate([
                (1, 10.0, None), (1, 1.0, Estimate(-9.0, -20.0, +2.0)),
                (1, 2.0, Estimate(-8.0, -9.0, -7.0)), (0, 0.5, Estimate(-9.5, -10, -9))])]
    res = TuneResult(rows=rows, budget=4, seeds=(0,), plan=[])
    assert res.best.name == "c1"  # the lowest FD at n_final, resolved or not
    assert res.recommended.name == "c2"  # c1's change is not resolved; c3 was not final
    assert "c1 has the lowest FD (1.00), but its change -9.00 [-20.00,+2.00] is not " \
        "resolved" in verdict(res)
    rows[2].dfd = Estimate(-8.0, -20.0, +2.0)
    assert res.recommended.name == "c0"  # nothing resolved: keep the baseline
    assert res.command() == "noiseshift sample --sampler euler-maruyama --steps 4"


def _gmm():
    data = make_gmm(dim=8, components=3, seed=0, n=256)
    return data, MixtureDenoiser(data.mixture, "linear")


def test_the_race_draws_the_grids_samples_and_meets_the_budget():
    data, model = _gmm()
    cands = (Candidate("em", "euler-maruyama"), Candidate("euler", "euler"),
             Candidate("heun", "heun"), Candidate("ddim1", "ddim", {"eta": 1.0}))
    meter = independent_meter(data, model.schedule)  # fitted once for both searches
    kw = dict(seeds=(1,), candidates=cands, n_final=32, n_boot=20, device="cpu", meter=meter)
    sh = tune(model, 5, data, n_start=16, share=0.8, **kw)
    grid = tune(model, 5, data, n_start=32, **kw)
    assert len(grid.rows) == 4 and all(r.n == 32 for r in grid.rows)
    by_name = {r.name: r for r in grid.rows}
    for r in sh.rows:
        assert r.model_evals == r.candidate.model_evals(r.steps) <= 5  # counted calls
        if r.n == 32:  # a finalist's samples are the grid's: the same FD to the last bit
            assert r.fd.value == by_name[r.name].fd.value
    assert {r.name: r.steps for r in sh.rows} == {"em": 5, "euler": 5, "heun": 3, "ddim1": 5}
    assert all(r.model_evals == r.candidate.model_evals(r.steps) for r in grid.rows)
    assert sh.samples < grid.samples and sh.model_evals <= 0.8 * grid.model_evals
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
    e = Estimate(0.0155, 0.01, 0.02)
    rows = [Row(c, 16, 1 if i < 3 else 0, 1024 if i < 3 else 64, Estimate(12.34, 1, 20),
                None if i == 0 else Estimate(0.85, -8.52, 10.85), e, e, None, e, 16.0, 0.01,
                0.00898, None if i < 3 else Estimate(2.5 + i / 100, 2, 3))
            for i, c in enumerate(CANDIDATES)]
    text = tune_table_text(rows, 16)  # asserts the 80 columns
    assert "+0.85 [-8.52,+10.85]" in text and "em-g0.5+step1.5 " in text and "8.98" in text
    assert " 12.34 " in text and " ~2.53 " in text  # finalists' FD, the others' estimate


def test_a_corrector_candidate_costs_what_it_is_counted():
    data, model = _gmm()
    cands = (Candidate("em", "euler-maruyama"),
             Candidate("corr", "dpmpp-2m", guidance={"corrector": (0.2, 2)}),
             Candidate("dcw", "euler", guidance={"dcw": -0.01, "dcw_form": "pixel"}))
    res = tune(model, 9, data, seeds=(0,), candidates=cands, n_start=16, n_final=16,
               n_boot=10, device="cpu",
               meter=independent_meter(data, model.schedule))
    by_name = {r.name: r for r in res.rows}
    assert by_name["corr"].steps == 3 and by_name["corr"].model_evals == 3 + 2 * 2
    assert by_name["dcw"].model_evals == 9
    assert "--corrector 0.2,2" in " ".join(cands[1].flags(4))
