"""Custom grids through diffusers pipelines: integer timesteps, k-style and flow sigmas, and
the shift-aware grid of a flow-matching scheduler (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from noiseshift.data import make_gmm
from noiseshift.errors import NoiseshiftError

diffusers = pytest.importorskip("diffusers")

from noiseshift.integrations.pipeline_runs import pipeline_run  # noqa: E402
from noiseshift.integrations.retime_diffusers import (  # noqa: E402
    custom_grid,
    flow_shift,
    retime_scheduler,
    unshift,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=16, components=4, std=0.3, seed=1)


def _pipe(scheduler):
    """A tiny DDPMPipeline (random UNet) around ``scheduler``: a real diffusers loop that
    calls set_timesteps and step (its samples mean nothing here)."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1,
                                 layers_per_block=1, block_out_channels=(8,), norm_num_groups=8,
                                 down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe, **grid):
    spec, backend = pipeline_run(pipe, n=2, steps=7, seed=0, **grid)
    last, _ = backend.draw(spec)
    return spec, last


def test_the_flow_shift_and_its_inverse():
    # shift 3 takes 0.5 to 3 * 0.5 / (1 + 2 * 0.5) = 0.75; unshift takes it back.
    assert unshift([0.75, 1.0, 0.0], 3.0) == pytest.approx([0.5, 1.0, 0.0])
    sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert flow_shift(sch) == 3.0
    dyn = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    assert flow_shift(dyn, 0.5) == pytest.approx(np.exp(0.5))
    with pytest.raises(NoiseshiftError, match="mu"):
        flow_shift(dyn)


@pytest.mark.parametrize("make, sigmas", [
    (lambda: diffusers.EulerDiscreteScheduler(), [14.6, 3.0, 1.1, 0.4, 0.0]),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), [1.0, 0.8, 0.5, 0.2, 0.0]),
])
def test_a_pipeline_holds_the_given_sigmas_after_its_call(make, sigmas):
    pipe = _pipe(make())
    spec, last = _draw(pipe, grid={"sigmas": sigmas})
    assert np.allclose(pipe.scheduler.sigmas.numpy(), sigmas, rtol=1e-6, atol=1e-7)
    assert spec.settings["steps"] == 4 and spec.settings["call"]["sigmas"] == sigmas
    assert torch.isfinite(last).all()
    assert "set_timesteps" not in pipe.scheduler.__dict__  # the grid is gone after the call


def test_dynamic_shifting_takes_the_calls_mu():
    sch = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    sigmas = [1.0, 0.6, 0.3, 0.0]
    with custom_grid(sch, sigmas=sigmas):
        sch.set_timesteps(28, mu=1.2)  # as Flux's pipeline calls it: its count is ignored
    assert np.allclose(sch.sigmas.numpy(), sigmas, atol=1e-6)


def test_a_file_gives_each_scheduler_the_list_it_takes():
    grid = {"timesteps": [999, 500, 100], "sigmas": [150.0, 1.0, 0.33, 0.0],
            "sigmas_kind": "ve"}
    spec, _ = _draw(_pipe(diffusers.DDPMScheduler()), grid=grid)
    assert spec.settings["call"]["timesteps"] == [999, 500, 100]
    spec, _ = _draw(_pipe(diffusers.EulerDiscreteScheduler()), grid=grid)
    assert spec.settings["call"]["sigmas"] == grid["sigmas"]
    with pytest.raises(NoiseshiftError, match="ve sigmas; FlowMatchEulerDiscreteScheduler "
                                              "takes flow sigmas"):
        _draw(_pipe(diffusers.FlowMatchEulerDiscreteScheduler()),
              grid={"sigmas": grid["sigmas"], "sigmas_kind": "ve"})


@pytest.mark.parametrize("make, grid, message", [
    (lambda: diffusers.DDPMScheduler(), {"sigmas": [1.0, 0.5, 0.0]},
     "DDPMScheduler takes no custom sigmas .*; it takes timesteps"),
    (lambda: diffusers.EulerAncestralDiscreteScheduler(), {"sigmas": [9.0, 1.0, 0.0]},
     "EulerAncestralDiscreteScheduler takes no custom sigmas"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1),
     {"sigmas": [1.0, 0.5, 0.2, 0.0]}, "turned the given sigmas into others"),
    (lambda: diffusers.EulerDiscreteScheduler(), {"sigmas": [1.0, 2.0, 0.0]},
     "strictly decreasing"),
    (lambda: diffusers.DDPMScheduler(), {"timesteps": [900.5, 100]}, "must be integers"),
])
def test_grids_a_scheduler_cannot_hold_are_refused_in_one_line(make, grid, message):
    with pytest.raises(NoiseshiftError, match=message) as e:
        _draw(_pipe(make()), grid=grid)
    assert "\n" not in str(e.value)


def test_flow_retime_lowers_the_shift_and_its_sigmas_round_trip(gmm):
    # FlowMatchEuler at 4 steps with the exact model: its states read off schedule; the
    # retimed grid reads closer to its labels than the scheduler's own grid.
    res = retime_scheduler(gmm, "diffusers:FlowMatchEulerDiscreteScheduler", steps=4, n=256,
                           iterations=2, n_boot=50)
    first, chosen = res.audits[0].mean_abs.value, res.audits[res.best].mean_abs.value
    assert res.best > 0 and chosen < 0.85 * first
    body = res.to_dict()
    sig = body["diffusers"]["sigmas"]
    assert body["diffusers"]["sigmas_kind"] == "flow" and "timesteps" not in body["diffusers"]
    assert sig == pytest.approx(body["timesteps"]) and sig[0] == 1.0 and sig[-1] == 0.0
    for shift in (1.0, 3.0):  # the scheduler's own shift lands on the written sigmas
        pipe = _pipe(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift))
        _draw(pipe, grid=body["diffusers"])
        assert np.allclose(pipe.scheduler.sigmas.numpy(), sig, atol=1e-6)


def test_cli_sample_passes_a_flow_retime_file_and_a_sigma_list(tmp_path, monkeypatch,
                                                                capsys):
    from helpers import cli_exit_2
    from typer.testing import CliRunner

    from noiseshift.cli import app
    from noiseshift.io import open_trajectories

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["retime", "--scheduler",
                                 "diffusers:FlowMatchEulerDiscreteScheduler", "--steps", "3",
                                 "--scheduler-config", '{"shift": 3.0}', "--n", "32",
                                 "--iterations", "1", "--out", "g.json"])
    assert r.exit_code == 0, r.output
    assert "sigmas=" in r.output
    body = json.loads((tmp_path / "g.json").read_text())
    sig = body["diffusers"]["sigmas"]
    # FlowMatchEuler's own 3-step grid: midway between sigma 1 and its shifted sigma_min
    # (3 * 0.001 / 1.002), then shifted by 3 itself.
    mid = (1 + 0.003 / 1.002) / 2
    start = body["iterations"][0]["timesteps"]
    assert body["config"] == {"shift": 3.0}
    assert start[1] == pytest.approx(3 * mid / (1 + 2 * mid), abs=1e-5)
    _pipe(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(tmp_path / "p")
    for grid, want in (("g.json", sig), ("sigmas:1,0.5,0.25,0", [1.0, 0.5, 0.25, 0.0])):
        r = CliRunner().invoke(app, ["sample", "--model", f"diffusers:{tmp_path / 'p'}",
                                     "--timesteps", grid, "--n", "2", "--record", "t.h5",
                                     "--run", "r", "--json"])
        assert r.exit_code == 0, r.output
        with open_trajectories(tmp_path / "t.h5") as f:
            assert f.run("r").attrs["sampler"]["call"]["sigmas"] == pytest.approx(want)
    err = cli_exit_2(["sample", "--model", f"diffusers:{tmp_path / 'p'}", "--timesteps",
                      "sigmas:1,0.5", "--n", "2", "--no-record"], capsys)
    assert len(err) == 1 and "end at 0" in err[0]


# -- the static relabel --------------------------------------------------------------------------

def test_model_timesteps_invert_the_tables_levels():
    from noiseshift.integrations.levels import VP_FAMILY, map_level, table_level
    from noiseshift.integrations.retime_diffusers import model_timesteps, timestep_levels

    sch = diffusers.DDPMScheduler()
    levels = timestep_levels(sch)
    assert model_timesteps(sch, levels[[0, 99, 500, 999]]) == pytest.approx([0, 99, 500, 999],
                                                                            abs=1e-6)
    t = 0.5 * (levels[99] + levels[100])  # between two entries: a fractional timestep
    frac = model_timesteps(sch, [t])[0]
    assert 99 < frac < 100
    a, s = table_level(sch.alphas_cumprod, frac)
    assert map_level(a, s, VP_FAMILY)[0] == pytest.approx(t, abs=1e-6)  # to 1e-4 timestep


def test_relabel_map_hands_the_network_the_tables_timestep():
    from noiseshift.integrations.retime_diffusers import relabel_map

    f = relabel_map({999: 999.0, 99: 84.5})
    got = f(torch.tensor(99))
    assert isinstance(got, torch.Tensor) and float(got) == 84.5
    assert f(99.0) == 84.5 and f(500) == 500


def _resolved_audit(shift, lo, hi):
    import pandas as pd

    class Audit:
        def __init__(self, grid):
            self.table = pd.DataFrame({"shift": shift, "shift_lo": lo, "shift_hi": hi})
            self.mean_abs = type("E", (), {"value": float(np.abs(shift).mean())})()

    return Audit


def test_resolved_moves_only_points_whose_shift_ci_excludes_zero():
    from noiseshift.analysis.retime import retime

    shift = np.array([0.0, 0.05, 0.02, -0.03])
    audit = _resolved_audit(shift, [-0.01, 0.01, -0.01, -0.04], [0.01, 0.09, 0.05, -0.02])
    ts = [1.0, 0.75, 0.5, 0.25, 0.0]
    every = retime(audit, ts, iterations=1, secant=False).grids[1]
    only = retime(audit, ts, iterations=1, resolved=True, secant=False).grids[1]
    assert np.allclose(every, [1.0, 0.8, 0.52, 0.22, 0.0])
    # 0.02 in [-0.01, 0.05] stays; so does 0.05 in [0.01, 0.09]: it excludes 0 at 95%, but
    # not at 95% over 4 states (half-width 0.04 x 1.274 = 0.051 > 0.05); -0.03 moves.
    assert np.allclose(only, [1.0, 0.75, 0.5, 0.22, 0.0])


def test_relabel_lowers_the_shift_read_against_the_networks_labels(gmm):
    from noiseshift.integrations.retime_diffusers import relabel_scheduler

    res = relabel_scheduler(gmm, "diffusers:DDIMScheduler", spacing="trailing", steps=4,
                            n=256, iterations=2, n_boot=50)
    dd = res.to_dict()["diffusers"]
    assert dd["timesteps"] == [999, 749, 499, 249]  # the scheduler's own grid, kept
    assert len(dd["relabel"]) == 4 and dd["relabel"][0] == pytest.approx(999)
    assert res.best > 0
    assert res.audits[res.best].mean_abs.value < 0.85 * res.audits[0].mean_abs.value
    with pytest.raises(NoiseshiftError, match="relabel runs VP schedulers"):
        relabel_scheduler(gmm, "FlowMatchEulerDiscreteScheduler", steps=3, n=16)


def test_a_pipeline_hands_its_unet_the_relabelled_timesteps():
    pipe = _pipe(diffusers.DDPMScheduler())
    seen = []
    pipe.unet.time_proj.register_forward_pre_hook(lambda m, args: seen.append(
        float(args[0].reshape(-1)[0])))
    spec, _ = _draw(pipe, grid={"timesteps": [999, 500, 100],
                                "relabel": [999.0, 480.5, 90.25]})
    assert seen == [999.0, 480.5, 90.25]
    assert spec.settings["call"]["relabel"] == [999.0, 480.5, 90.25]
    assert "forward" not in pipe.unet.__dict__
    seen.clear()
    _draw(pipe, grid={"timesteps": [999, 500, 100]})
    assert seen == [999.0, 500.0, 100.0]
    with pytest.raises(NoiseshiftError, match="one timestep in 0..999 for each"):
        _draw(pipe, grid={"timesteps": [999, 500, 100], "relabel": [999.0, 480.5]})


def test_cli_retime_relabel_needs_a_scheduler(capsys):
    from helpers import cli_exit_2

    err = cli_exit_2(["retime", "--relabel", "--n", "8"], capsys)
    assert len(err) == 1 and "--relabel applies to --scheduler" in err[0]
