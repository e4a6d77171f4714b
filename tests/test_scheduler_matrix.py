"""The diffusers scheduler matrix: known diffusers bugs are flagged, the correct configuration
of the same scheduler is not, and the CLI reads at 80 columns.

Where the installed diffusers has fixed a bug, a subclass puts the issue's formula back and
is registered on the diffusers module for the test (build_scheduler finds classes by name).
"""

from __future__ import annotations

import json
import math

import pytest

diffusers = pytest.importorskip("diffusers")

from noiseshift.integrations.scheduler_matrix import (  # noqa: E402
    audit_matrix,
    check_configuration,
    discover,
)

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SMALL = {"n": 64, "n_boot": 50}


def check(name, spacing=None, config=None, steps=(10,)):
    return check_configuration(name, spacing, config, steps=steps, **SMALL)


def test_ddim_linspace_previous_timestep_is_flagged_trailing_is_not():
    # diffusers #12633 / #11347: step() uses t - T // n, set_timesteps(linspace) strides by 111
    bad = check("DDIMScheduler", "linspace")
    assert bad.flag and bad.flag.startswith("off its labels"), bad.flag
    assert abs(bad.runs[0].probe_error) > 0.03
    good = check("DDIMScheduler", "trailing")
    assert good.flag is None, good.flag
    assert abs(good.runs[0].probe_error) < 0.005


def test_ddim_trailing_at_13_steps_keeps_residual_noise():
    # diffusers #9261: with trailing and 13 steps the last timestep 76 steps to 76 - 76 = 0,
    # so the sample ends at alphas_cumprod[0], not at final_alpha_cumprod = 1
    bad = check("DDIMScheduler", "trailing", steps=(13,))
    assert bad.flag and bad.flag.startswith("residual noise"), bad.flag
    assert bad.runs[0].probe_residual > 0.005
    assert check("DDIMScheduler", "trailing", steps=(10,)).flag is None


class StrideDDPMScheduler(diffusers.DDPMScheduler):
    """DDPM before diffusers PR #9384: the previous timestep is t - T // n, whatever the
    spacing (the formula diffusers #9261 describes)."""

    def previous_timestep(self, timestep):
        return timestep - self.config.num_train_timesteps // self.num_inference_steps


def test_ddpm_previous_timestep_fixed_upstream_reintroduced_is_flagged(monkeypatch):
    monkeypatch.setattr(diffusers, "StrideDDPMScheduler", StrideDDPMScheduler, raising=False)
    bad = check("StrideDDPMScheduler", "trailing", steps=(13,))
    assert bad.flag and bad.flag.startswith("residual noise"), bad.flag
    assert check("DDPMScheduler", "trailing", steps=(13,)).flag is None


def test_dpm_final_sigma_min_leaves_residual_noise_zero_does_not():
    # diffusers #5689: DPM++ ending at sigma_min leaves noise in the final image; the
    # installed default (final_sigmas_type="zero") ends clean
    bad = check("DPMSolverMultistepScheduler", "trailing", {"final_sigmas_type": "sigma_min"})
    assert bad.flag and bad.flag.startswith("residual noise"), bad.flag
    good = check("DPMSolverMultistepScheduler", "trailing")
    assert good.flag is None, good.flag
    assert good.runs[0].probe_residual < 0.002


def test_non_zero_terminal_snr_is_flagged_rescaled_is_not():
    # Lin et al.: SD's betas label pure noise t = 0.957; rescaled to zero terminal SNR (with
    # v prediction and trailing spacing, as the paper asks) the label is 1
    bad = check("DDIMScheduler", "trailing", SD_BETAS)
    assert bad.flag and bad.flag.startswith("first step"), bad.flag
    assert bad.runs[0].first_step == pytest.approx(0.0435, abs=2e-3)
    good = check("DDIMScheduler", "trailing", {**SD_BETAS, "rescale_betas_zero_snr": True,
                                                "prediction_type": "v_prediction"})
    assert good.flag is None, good.flag
    assert good.runs[0].first_step < 1e-6


def test_flow_match_double_shift_stays_on_its_labels():
    # diffusers #13243 (still there): sigma_min is taken after the shift and shifted again,
    # so the last non-zero sigma is shift(shift(1/T)); every state stays at the level its
    # timestep names, so this moves the grid and the matrix rightly does not flag it
    sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(10)
    once = 3.0 * 1e-3 / (1 + 2.0 * 1e-3)
    assert float(sch.sigmas[-2]) == pytest.approx(3.0 * once / (1 + 2.0 * once), rel=1e-3)
    res = check("FlowMatchEulerDiscreteScheduler", None, {"shift": 3.0})
    assert res.flag is None, res.flag
    assert abs(res.runs[0].probe_error) < 0.005


def test_discover_keeps_readable_schedulers_and_says_why_others_are_skipped():
    keep, skipped = discover(["DDIMScheduler", "EDMEulerScheduler", "UnCLIPScheduler"])
    assert keep == ["DDIMScheduler"]
    assert "EDM" in skipped["EDMEulerScheduler"]
    assert "prev_timestep" in skipped["UnCLIPScheduler"]


def test_matrix_ranks_flagged_first_and_prints_at_80_columns(tmp_path):
    from rich.console import Console

    from noiseshift.report.matrix import flag_lines, matrix_rich

    res = audit_matrix(schedulers=["DDIMScheduler"], spacings=["linspace", "trailing"],
                       steps=(5, 10), configs="default", **SMALL)
    assert [r.spacing for r in res.rows] == ["linspace", "trailing"]
    assert res.rows[0].flag and res.rows[1].flag is None
    assert math.isfinite(res.rows[0].order)  # fitted across the two step counts
    con = Console(width=80, record=True)
    con.print(matrix_rich(res))
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "DDIM linspace" in text
    assert flag_lines(res)[0].startswith("! DDIM linspace: off its labels")
    json.dumps(res.to_dict())


def test_cli_matrix_json_and_plot(tmp_path):
    from typer.testing import CliRunner

    from noiseshift.cli import app

    fig = tmp_path / "m.png"
    out = CliRunner().invoke(app, ["audit", "--diffusers-matrix", "--schedulers",
                                   "DDIMScheduler", "--spacings", "trailing", "--configs",
                                   "default", "--steps", "5,10", "--n", "32", "--bootstrap",
                                   "20", "--json", "--plot", "--out", str(fig)])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["configurations"][0]["flag"] is None
    assert [r["steps"] for r in got["configurations"][0]["runs"]] == [5, 10]
    assert fig.stat().st_size > 0
    bad = CliRunner().invoke(app, ["audit", "--diffusers-matrix", "--schedulers", "NoScheduler"])
    assert bad.exit_code == 2
