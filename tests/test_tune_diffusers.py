"""`noiseshift tune --model diffusers:DIR` on a tiny pipeline saved to a tmp folder (random
weights: plumbing, budgets and pairing are checked, not quality): each candidate's counted
model evaluations within the budget, the same samples for the same seed whichever block
draws them, the command end to end, and bad input as one line, exit 2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")

from helpers import cli_exit_2, image_gmm, tune_table_text  # noqa: E402

from noiseshift.cli import app  # noqa: E402
from noiseshift.errors import NoiseshiftError  # noqa: E402
from noiseshift.integrations.tiny import tiny_unet  # noqa: E402
from noiseshift.integrations.tune_diffusers import (  # noqa: E402
    PIPELINE_CANDIDATES,
    PipelineCandidate,
    PipelineModel,
    applicable,
    load_for_tune,
    tune_pipeline,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TABLE = {c.name: c for c in PIPELINE_CANDIDATES}


def _save(folder, shape):
    unet = tiny_unet(shape, channels=(8, 16))
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    """States of the 64-d mixture's shape as images (`helpers.image_gmm`)."""
    return _save(tmp_path_factory.mktemp("pipe") / "ddpm", (1, 8, 8))


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """States of 16x16 digits' shape."""
    return _save(tmp_path_factory.mktemp("pipe16") / "ddpm", (1, 16, 16))


def _pipe(pipe_dir):
    return load_for_tune(f"diffusers:{pipe_dir}", scheduler="ddim", spacing="trailing",
                         device="cpu")


def test_heun_spends_two_evaluations_a_step_but_one_at_the_last():
    heun = PipelineCandidate("h", "HeunDiscreteScheduler", calls=2)
    assert heun.steps_for(10) == 5 and heun.model_evals(5) == 9
    assert PipelineCandidate("d", "DDIMScheduler").steps_for(10) == 10


def test_candidates_meet_the_budget_counted_on_the_network(pipe_dir):
    pipe, data = _pipe(pipe_dir), image_gmm((1, 8, 8))
    names = ["as-loaded", "dpm++2m", "ddpm-trailing", "ddim-trailing", "euler", "unipc",
             "+eps0.99", "+dcw0.005", "+retimed"]
    res = tune_pipeline(pipe, 5, data, source=f"diffusers:{pipe_dir}",
                        candidates=[TABLE[n] for n in names], n_start=8, n_final=16,
                        n_boot=20)
    rows = {r.name: r for r in res.rows}
    assert sorted(rows) == ["+dcw0.005", "+eps0.99", "+retimed", "ddim-trailing",
                            "ddpm-trailing", "dpm++2m"]
    for r in res.rows:  # counted forward calls, per sample
        assert r.model_evals == r.candidate.model_evals(r.steps) == 5
        assert r.shift is not None
    assert len(rows["+retimed"].candidate.timesteps) == 5
    notes = " ".join(res.notes)
    assert "ddim-trailing: the same as the scheduler as loaded" in notes
    assert "euler: DDPMPipeline's loop neither scales" in notes and "unipc: " in notes
    assert res.baseline.name == "ddim-trailing"
    assert res.command().startswith(f"noiseshift sample --model diffusers:{pipe_dir} ")
    assert "from_pretrained" in res.python_lines()


class _Grab:
    """A meter that keeps the states it is shown."""

    def __init__(self):
        self.xs = []

    def predict(self, x):
        self.xs.append(x.clone())
        return torch.zeros(len(x)), None

    def reference(self, t):
        return 0.0


def test_the_same_seed_draws_the_same_samples_in_any_block(pipe_dir):
    pipe = _pipe(pipe_dir)
    model = PipelineModel(pipe)
    keep, _ = applicable(pipe, [TABLE["as-loaded"], TABLE["dpm++2m"]], 4)
    base, dpm = keep

    def draw(c, seed, idx):
        ctx = SimpleNamespace(meter=_Grab(), n_total=8, estimator=None)
        return model._call(c, 4, seed, idx, ctx)[0], ctx.meter.xs

    (a, _), (b, _) = draw(base, 0, range(0, 4)), draw(base, 0, range(0, 2))
    close = dict(atol=1e-4, rtol=1e-4)  # CPU kernels differ by batch size in the last bits
    torch.testing.assert_close(a[:2], b, **close)
    assert not torch.allclose(draw(base, 1, range(0, 2))[0], b, **close)
    # sample 2 drawn alone, as the first of its block
    torch.testing.assert_close(a[2:3], draw(base, 0, range(2, 3))[0], **close)
    # another candidate starts from the same noise and ends elsewhere
    (x_dpm, s_dpm), (x_base, s_base) = draw(dpm, 0, range(0, 2)), draw(base, 0, range(0, 2))
    assert len(s_dpm) == len(s_base) == 4
    torch.testing.assert_close(s_dpm[0], s_base[0], atol=0, rtol=0)
    assert not torch.allclose(x_dpm, x_base, **close)
    assert pipe.scheduler is model.base  # put back after each draw


def test_tune_on_a_pipeline_end_to_end(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NOISESHIFT_TINY", "1")  # the digits classifier's tiny recipe
    fig = tmp_path / "tune.png"
    res = CliRunner().invoke(app, [
        "tune", "--model", f"diffusers:{digits_dir}", "--scheduler", "ddim", "--spacing",
        "trailing", "--data", "digits", "--budget", "4", "--n-start", "8",
        "--n-final", "16", "--bootstrap", "20", "--candidates", "dpm++2m,+eps0.99",
        "--plot", str(fig), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert sorted(r["name"] for r in out["rows"]) == ["+eps0.99", "ddim-trailing", "dpm++2m"]
    assert all(r["model_evals"] == 4 for r in out["rows"]) and fig.exists()
    assert out["command"].startswith(f"noiseshift sample --model diffusers:{digits_dir}")
    assert "--steps 4" in out["command"] and "pipe.scheduler" in out["python"]


@pytest.mark.parametrize("extra, says", [
    ([], "needs --data"),
    (["--data", "digits", "--scheduler", "nope"], "unknown scheduler"),
    (["--data", "digits", "--scheduler", "flow-euler"], "does not fit"),
    (["--data", "digits", "--candidates", "heun,nope"], "nope"),
])
def test_bad_pipeline_input_is_one_line_exit_2(pipe_dir, extra, says, capsys):
    lines = cli_exit_2(["tune", "--model", f"diffusers:{pipe_dir}", *extra], capsys)
    assert len(lines) == 1 and says in lines[0]


def test_a_broken_folder_and_builtin_only_options_are_one_line(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{not json")
    lines = cli_exit_2(["tune", "--model", f"diffusers:{tmp_path}", "--data", "digits"],
                       capsys)
    assert len(lines) == 1 and "model_index.json" in lines[0]
    lines = cli_exit_2(["tune", "--spacing", "trailing"], capsys)
    assert len(lines) == 1 and "diffusers:DIR only" in lines[0]


def test_a_baseline_the_loop_cannot_run_is_refused(pipe_dir):
    pipe = _pipe(pipe_dir)
    with pytest.raises(NoiseshiftError, match="scale_model_input"):
        applicable(pipe, [TABLE["euler"]], 4)
    cf = PipelineCandidate("+cf", guidance={"nag_mode": "cf", "nag_scale": 1.0})
    keep, notes = applicable(pipe, [TABLE["as-loaded"], cf, TABLE["dpm++2m+step1.5"]], 4)
    assert [c.name for c in keep] == ["ddim-trailing", "dpm++2m+step1.5"]
    assert notes[0].startswith("+cf: nag mode 'cf' runs the model's null-t branch")
    with pytest.raises(NoiseshiftError, match="shape"):
        tune_pipeline(pipe, 4, image_gmm((1, 4, 16)), source="x")


def test_a_weak_pipelines_table_still_reads_at_80_columns():
    from noiseshift.analysis.statistics import Estimate
    from noiseshift.tuning.result import Row

    e = Estimate(0.0155, 0.01, 0.02)
    rows = [Row(c, 10, 0, 128, Estimate(1894.41, 1, 3000),
                None if i == 0 else Estimate(1809.15, 418.22, 3722.12), e, e, None, e, 19.0,
                0.01, 0.00898) for i, c in enumerate(PIPELINE_CANDIDATES)]
    text = tune_table_text(rows, 10)  # asserts the 80 columns
    assert "+1809 [+418,+3722]" in text and "1894 " in text and "8.98" in text
