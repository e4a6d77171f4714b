"""`noiseshift audit` and `noiseshift decompose` from the command line; a diffusers scheduler's
known label error; the mixture fitted to user data."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from noiseshift.analysis.audit import default_mixture, fit_mixture
from noiseshift.analysis.simulation import exact_meter
from noiseshift.cli import app
from noiseshift.data import Dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_audit_json_convergence_and_plot(tmp_path):
    out = json.loads(_cli("audit", "--steps", "4,8", "--n", 64, "--bootstrap", 20, "--json",
                          "--plot", "--out", tmp_path / "a.png"))
    assert len(out["audits"]) == 2 and (tmp_path / "a.png").stat().st_size > 0
    assert out["convergence"]["order"] > 0.5
    assert "sampler alone" in out["audits"][0]["verdict"]


def test_leading_spacing_shows_its_first_step_label_error():
    """DDIM 'leading' at 2 steps starts at timestep 500: pure noise (t = 1) labelled
    t0 = 2/pi atan(sqrt((1 - abar) / abar)). The audit reads 1 - t0 at step 0 times the
    meter's gain, i.e. the meter's own reference(1) - reference(t0). (At 10 steps, timestep
    900, the label error 1 - t0 is 0.010 and at 4 steps 0.037: there, near t = 1, the exact
    meter's gain is ~0.1, so the audit's step 0 reads only +0.001 and +0.004.)"""
    pytest.importorskip("diffusers")
    from noiseshift.integrations.audit_diffusers import audit_scheduler, build_scheduler

    mix = default_mixture()
    res = audit_scheduler(mix, "diffusers:DDIMScheduler", steps=2, spacing="leading", n=256)
    abar = float(build_scheduler("DDIMScheduler").alphas_cumprod[500])
    t0 = 2 / math.pi * math.atan2(math.sqrt(1 - abar), math.sqrt(abar))
    row = res.table.iloc[0]
    assert row.t == pytest.approx(t0, abs=1e-9)
    meter = exact_meter(mix, "vp-cosine")
    expected = float(meter.reference(1.0)) - float(meter.reference(t0))
    assert row.shift_lo - 0.005 <= expected <= row.shift_hi + 0.005, (row, expected)
    assert row.shift_lo > 0.2 * (1 - t0) > 0.03  # resolvable, though the meter reads ~1/3
    trailing = audit_scheduler(mix, "DDIMScheduler", steps=2, spacing="trailing", n=256)
    assert trailing.table.iloc[0].shift_lo <= 0 <= trailing.table.iloc[0].shift_hi


def test_fit_mixture_matches_dimension_and_second_moment():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 12, generator=g) * 0.3 + 2, torch.randn(300, 12,
                                                                         generator=g) * 0.5])
    x[:, 0] *= 3
    fitted = fit_mixture(Dataset(x=x, labels=None, spec={"name": "toy"}), components=2, rank=2)
    m = fitted.mixture
    assert m.dim == 12 and len(m.weights) == 2
    per_dim = (m.weights[:, None] * m.means.pow(2)).sum(0) + (m.weights * m.stds**2).sum()
    assert torch.allclose(per_dim, x.double().pow(2).mean(0), rtol=1e-6)



def test_missing_diffusers_and_bad_options_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    res = CliRunner().invoke(app, ["audit", "--scheduler", "diffusers:DDIMScheduler"])
    assert res.exit_code == 2 and "pip install 'noiseshift[diffusers]'" in res.output
    res = CliRunner().invoke(app, ["audit", "--steps", "8,x"])
    assert res.exit_code == 2 and "--steps must be integers" in res.output


def test_decompose_command_on_a_tiny_trained_model(tmp_path):
    """The command end to end: a checkpoint's recorded run, re-generated bit for bit and
    split (the known answers are in test_audit.py)."""
    from noiseshift.data import make_gmm
    from noiseshift.models import save_model
    from noiseshift.recording import describe_model, sample_and_record
    from noiseshift.training import train_denoiser

    model = train_denoiser(make_gmm(dim=16, n=256), "linear", steps=10, batch_size=32,
                           ema_decay=None)
    ckpt = save_model(model, tmp_path / "m.pt")
    traj = tmp_path / "t.h5"
    sample_and_record(model, traj, "unguided", 32, steps=4,
                      model_info=describe_model(model, str(ckpt)))
    out = json.loads(_cli("decompose", traj, "--k", 2, "--bootstrap", 20, "--json", "--plot",
                          "--out", tmp_path / "d.png"))
    assert out["estimator"] == "oracle" and out["reproduced_max_abs_diff"] == 0.0
    assert len(out["per_step"]) == 4 and (tmp_path / "d.png").stat().st_size > 0
    for row in out["per_step"]:
        assert row["total"] == pytest.approx(row["sampler"] + row["network"], abs=1e-9)


def test_audit_with_data_fits_a_mixture_to_the_file(tmp_path):
    g = torch.Generator().manual_seed(1)
    np.save(tmp_path / "x.npy", (torch.randn(200, 16, generator=g) * 0.7 + 0.3).numpy())
    out = json.loads(_cli("audit", "--data", tmp_path / "x.npy", "--components", 3, "--steps",
                          4, "--n", 64, "--bootstrap", 20, "--json"))
    assert len(out["audits"][0]["per_step"]) == 4
