"""Sampler-side corrections: a user's time grid, relabelling, the Langevin corrector and the
shift-aware grid (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from noiseshift.analysis.retime import regrid, retime, retime_builtin
from noiseshift.data import MixtureDenoiser, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.guidance import GuidanceWarning, build_guidance
from noiseshift.guidance.sampler_side import LangevinCorrector, Relabel
from noiseshift.runspec import RunSpec
from noiseshift.sampling import sample, sampler_settings
from noiseshift.schedules import get_schedule
from noiseshift.timegrid import check_timesteps, read_timesteps, timesteps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=16, components=4, std=0.3, seed=1)


def _exact(data):
    return MixtureDenoiser(data.mixture, get_schedule("linear"))


# -- a user's grid -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, why", [([0.5], "at least 2"), ([1.0, 0.5, 0.6], "decreasing"),
                                      ([1.2, 0.0], "in \\[0, 1\\]"),
                                      ([1.0, float("nan")], "finite"), (["a", "b"], "numbers")])
def test_check_timesteps_refuses_in_one_line(bad, why):
    with pytest.raises(NoiseshiftError, match=why):
        check_timesteps(bad)


def test_read_timesteps_from_a_list_a_text_file_and_a_json_file(tmp_path):
    assert read_timesteps("1,0.5,0") == [1.0, 0.5, 0.0]
    (tmp_path / "g.txt").write_text("1 0.6\n0.2, 0\n")
    assert read_timesteps(str(tmp_path / "g.txt")) == [1.0, 0.6, 0.2, 0.0]
    (tmp_path / "g.json").write_text(json.dumps({"timesteps": [0.9, 0.1]}))
    assert read_timesteps(str(tmp_path / "g.json")) == [0.9, 0.1]
    with pytest.raises(NoiseshiftError, match="neither a file"):
        read_timesteps("no-such-file")


def test_a_given_even_grid_gives_the_same_samples_and_is_recorded_only_when_given(gmm):
    model = _exact(gmm)
    a = sample(model, 16, sampler="euler-maruyama", steps=5, seed=3)
    grid = timesteps(5).tolist()
    b = sample(model, 16, sampler="euler-maruyama", steps=99, seed=3, timesteps=grid)
    assert torch.equal(a, b)
    plain = sampler_settings("euler-maruyama", 5)
    given = sampler_settings("euler-maruyama", 99, timesteps=[0.9, 0.5, 0.0])
    assert "timesteps" not in plain
    assert given["steps"] == 2 and given["t_max"] == 0.9 and given["timesteps"][1] == 0.5
    spec = RunSpec.for_model(model, n=4, timesteps=[0.9, 0.5, 0.0])
    assert spec.steps == 2 and spec.settings["timesteps"] == [0.9, 0.5, 0.0]
    assert "timesteps" not in RunSpec.for_model(model, n=4).settings


def test_an_eps_model_refuses_a_grid_that_starts_where_alpha_is_zero(gmm):
    model = MixtureDenoiser(gmm.mixture, get_schedule("linear"), "eps")
    with pytest.raises(NoiseshiftError, match="cannot start at t = 1"):
        sample(model, 4, timesteps=[1.0, 0.5, 0.0])


# -- relabelling -------------------------------------------------------------------------------

class _Reads:
    """An estimator whose calibrated reading of every state is ``level``."""

    def __init__(self, level):
        self.level = level

    def predict(self, x):
        return (torch.full((x.shape[0],), float(self.level), dtype=torch.float64),)

    def reference(self, t):
        return torch.as_tensor(t, dtype=torch.float64)


def test_relabel_feeds_the_read_level_and_keeps_the_x0_found_there(gmm):
    model, sch = _exact(gmm), get_schedule("linear")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    same = Relabel(model, _Reads(0.5), scale=1.0)
    assert torch.allclose(same(x, t), model(x, t))
    moved = Relabel(model, _Reads(0.6), scale=1.0)(x, t)
    x0_there = sch.convert(model(x, torch.full_like(t, 0.6)), "velocity", "x0", x, 0.6)
    assert torch.allclose(sch.convert(moved, "velocity", "x0", x, 0.5), x0_there)
    half = Relabel(model, _Reads(0.6), scale=0.5, window=0.02)  # the window caps the move
    x0_cap = sch.convert(model(x, torch.full_like(t, 0.52)), "velocity", "x0", x, 0.52)
    assert torch.allclose(sch.convert(half(x, t), "velocity", "x0", x, 0.5), x0_cap)


def test_relabel_is_a_nag_mode(gmm):
    with pytest.warns(GuidanceWarning, match="16-dimensional"):
        guided, desc = build_guidance(_exact(gmm), nag_mode="relabel", nag_scale=1.0,
                                      estimator=_Reads(0.5))
    assert isinstance(guided, Relabel) and desc["kind"] == "nag-relabel-1"


# -- the Langevin corrector --------------------------------------------------------------------

def test_the_corrector_pulls_states_to_the_marginal_and_counts_its_evaluations():
    # Data N(0, c^2 I): the marginal at t is N(0, v I), v = alpha^2 c^2 + sigma^2. States
    # drawn twice too wide are pulled to v by Langevin moves on the exact score.
    data = make_gmm(dim=64, components=1, std=0.5, seed=0)
    data.mixture.means.zero_()
    model, sch, t = _exact(data), get_schedule("linear"), 0.5
    v = float(sch.alpha(t)) ** 2 * 0.25 + float(sch.sigma(t)) ** 2
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0)) * (2 * v) ** 0.5
    corr = LangevinCorrector(model, snr=0.16, steps=150)
    gen = torch.Generator().manual_seed(1)
    out = corr.correct(model, x, t, None, lambda: torch.randn(x.shape, generator=gen))
    # Within 8%: Langevin's stationary law is a little wide, from the step size (O(snr^2))
    # and from the step size reading |z| of the very draw it scales (O(1/d)); 7% here.
    assert float(out.pow(2).mean()) == pytest.approx(v, rel=0.08)
    assert float(x.pow(2).mean()) > 1.8 * v
    assert corr.evaluations == 256 * 150


def test_a_corrector_that_finds_every_state_on_schedule_changes_nothing(gmm):
    model = _exact(gmm)
    plain = sample(model, 16, steps=4, seed=0)
    gated = LangevinCorrector(model, snr=0.2, tolerance=0.05, estimator=_Reads(0.0))
    gated.off_schedule = lambda x, t: torch.zeros(x.shape[0], dtype=torch.bool)
    assert torch.equal(sample(gated, 16, steps=4, seed=0), plain)
    everywhere, desc = build_guidance(model, corrector=(0.2, 2))
    moved = sample(everywhere, 16, steps=4, seed=0)
    assert not torch.equal(moved, plain)
    assert everywhere.evaluations == 16 * 2 * 3  # 2 moves after each of the 3 inner steps
    assert desc["kind"] == "corrector-0.2x2"
    assert torch.equal(sample(everywhere, 16, steps=4, seed=0), moved)  # seeded


# -- the shift-aware grid ----------------------------------------------------------------------

def test_regrid_moves_each_point_by_its_shift_and_keeps_the_ends():
    ts = [1.0, 0.75, 0.5, 0.25, 0.0]
    new = regrid(ts, [0.0, 0.05, -0.02, 0.01])
    assert np.allclose(new, [1.0, 0.8, 0.48, 0.26, 0.0])
    folded = regrid(ts, [0.0, -0.5, 0.4, 0.0])  # would cross: kept decreasing, MIN_GAP apart
    assert np.all(np.diff(folded) < 0) and folded[0] == 1.0 and folded[-1] == 0.0
    secant = regrid(ts, [0.0, 0.0, -0.02, 0.0], slope=[-1, -1, 0.5, -1])  # rising delta
    assert secant[2] == pytest.approx(0.54)


def _fake_audit(gain: float, offset: float):
    """A sampler whose state at interior grid point g reads at gain * g + offset."""
    import pandas as pd

    class Audit:
        def __init__(self, grid):
            shift = np.append(0.0, (gain - 1) * grid[1:-1] + offset)
            self.table = pd.DataFrame({"shift": shift})
            self.mean_abs = type("E", (), {"value": float(np.abs(shift).mean())})()

    return Audit


@pytest.mark.parametrize("gain, offset", [(0.5, 0.25), (1.5, -0.25)])
def test_retime_finds_the_grid_point_whose_state_reads_at_it(gain, offset):
    # Both fixed points are g* = 0.5. With gain 0.5 the plain move g + delta converges;
    # with gain 1.5 it diverges (0.3 -> 0.2 -> 0.05) and the secant step must take over.
    res = retime(_fake_audit(gain, offset), [1.0, 0.3, 0.0], iterations=6)
    assert res.grid[1] == pytest.approx(0.5, abs=0.01)
    assert res.audits[res.best].mean_abs.value < 0.01


def test_retime_builtin_writes_a_grid_sample_takes(gmm):
    res = retime_builtin(gmm, sampler="euler-maruyama", steps=4, n=64, iterations=1,
                         n_boot=20)
    grid = res.to_dict()["timesteps"]
    assert len(res.audits) == 2 and len(grid) == 5 and grid[0] == 1.0 and grid[-1] == 0.0
    out = sample(_exact(gmm), 8, timesteps=grid)
    assert out.shape == (8, 16) and torch.isfinite(out).all()


# -- diffusers: a custom grid passed through -----------------------------------------------------

def _tiny_pipe(folder, clip=False):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 layers_per_block=1, block_out_channels=(8,), norm_num_groups=8,
                                 down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=clip)
                           ).save_pretrained(folder)


def test_ddim_grid_runs_as_first_order_dpm_solver_with_ddim_states(tmp_path):
    # DDIM's own trailing timesteps, passed as a custom grid, give DDIM's samples: the
    # stand-in scheduler (first-order DPM-Solver++) is DDIM's update.
    from noiseshift.integrations.diffusers import load_pipeline
    from noiseshift.integrations.pipeline_runs import pipeline_run

    _tiny_pipe(tmp_path / "pipe")

    def draw(timesteps=None):
        pipe = load_pipeline(tmp_path / "pipe", scheduler="ddim", spacing="trailing")
        pipe.set_progress_bar_config(disable=True)
        spec, backend = pipeline_run(pipe, n=2, steps=3, seed=0, timesteps=timesteps)
        return spec, backend.draw(spec)[0], pipe

    spec_a, a, pipe = draw()
    trailing = pipe.scheduler.timesteps.tolist()  # [999, 666, 332]
    spec_b, b, _ = draw(trailing)
    assert spec_b.settings["name"] == "DPMSolverMultistepScheduler"
    assert spec_b.settings["call"]["timesteps"] == trailing
    assert "timesteps" not in spec_a.settings.get("call", {})
    assert a.shape == b.shape and torch.isfinite(b).all()
    with pytest.raises(NoiseshiftError, match="decrease strictly"):
        draw([5, 9])
    _tiny_pipe(tmp_path / "pipe", clip=True)
    with pytest.raises(NoiseshiftError, match="clip_sample"):
        draw([999, 666, 333])


def test_the_ddim_stand_in_gives_ddim_states_and_samples_on_the_exact_model(gmm):
    pytest.importorskip("diffusers")
    from noiseshift.integrations.audit_diffusers import build_scheduler, run_scheduler
    from noiseshift.integrations.retime_diffusers import DDIM_AS, custom_grid

    ddim = build_scheduler("DDIMScheduler", "trailing")
    ddim.set_timesteps(5)
    trailing = ddim.timesteps.tolist()
    fa, fb = {}, {}
    _, sa, _ = run_scheduler(ddim, gmm.mixture, 5, 16, 0, trace=fa)
    stand_in = build_scheduler(DDIM_AS[0], "trailing", DDIM_AS[1])
    with custom_grid(stand_in, timesteps=trailing):
        _, sb, _ = run_scheduler(stand_in, gmm.mixture, 5, 16, 0, trace=fb)
    assert torch.allclose(sa, sb, atol=1e-4)
    assert torch.allclose(fa["final"], fb["final"], atol=1e-4)


def test_custom_grid_refuses_a_scheduler_without_custom_timesteps():
    diffusers = pytest.importorskip("diffusers")
    from noiseshift.integrations.retime_diffusers import custom_grid

    with pytest.raises(NoiseshiftError, match="DDIMScheduler takes no custom timesteps"):
        with custom_grid(diffusers.DDIMScheduler(), timesteps=[9, 5]):
            pass


# -- the command line --------------------------------------------------------------------------

def test_cli_retime_writes_a_grid_and_sample_refuses_bad_grids(tmp_path, monkeypatch, capsys):
    from helpers import cli_exit_2
    from typer.testing import CliRunner

    from noiseshift.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["retime", "--steps", "3", "--n", "32", "--iterations", "1",
                                 "--out", "g.json", "--json"])
    assert r.exit_code == 0, r.output
    grid = json.loads((tmp_path / "g.json").read_text())["timesteps"]
    assert len(grid) == 4 and grid[0] == 1.0
    err = cli_exit_2(["sample", "--timesteps", "0.2,0.5", "--no-record"], capsys)
    assert "strictly decreasing" in " ".join(err)
    err = cli_exit_2(["sample", "--corrector", "0,1", "--no-record", "--n", "4"], capsys)
    assert "SNR > 0" in " ".join(err)


def test_the_adapters_refuse_relabel_in_one_line():
    from noiseshift.integrations.guided import check_mode

    with pytest.raises(NoiseshiftError, match="calls the network at another t"):
        check_mode("relabel", "diffusers")


def test_one_move_from_a_recorded_runs_readings(tmp_path, gmm):
    from noiseshift.analysis.retime import regrid_from_estimates
    from noiseshift.io.estimates import write_estimates
    from noiseshift.recording import sample_and_record

    traj = tmp_path / "t.h5"
    sample_and_record(_exact(gmm), traj, "unguided", 8, steps=4, save_x0=False)
    t = timesteps(4).numpy()[:-1]
    write_estimates(tmp_path / "e.h5", traj, [{
        "run": "unguided", "estimator": "fake", "reference": t,
        "t_hat": np.tile(t[:, None] + 0.05, (1, 8)), "t_std": np.zeros((4, 8))}])
    body = regrid_from_estimates(tmp_path / "e.h5", "unguided")
    assert np.allclose(body["timesteps"], [1.0, 0.8, 0.55, 0.3, 0.0])
    with pytest.raises(NoiseshiftError, match="no run 'other'"):
        regrid_from_estimates(tmp_path / "e.h5", "other")
