"""Named time grids: log-SNR-uniform, EDM's Karras spacing and powers of t (issue 22)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from noiseshift.cli.sample import diffusers_timesteps, sampler_options
from noiseshift.data import MixtureDenoiser, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.runspec import RunSpec
from noiseshift.sampling import sample, sampler_settings
from noiseshift.schedules import get_schedule
from noiseshift.timegrid import (
    karras_grid,
    logsnr_grid,
    named_grid,
    parse_grid_name,
    parse_timesteps,
    power_grid,
    timesteps,
)
from noiseshift.tuning.candidates import Candidate

pytestmark = pytest.mark.usefixtures("one_thread")
LINEAR, VE = get_schedule("linear"), get_schedule("ve")


def test_the_linear_schedules_inverse_log_snr_has_known_answers():
    # log-SNR 0: alpha = sigma, t = 1/2; log-SNR 2 log 3: alpha = 3 sigma, t = 1/4
    assert float(LINEAR.t_from_log_snr(0.0)) == pytest.approx(0.5)
    assert float(LINEAR.t_from_log_snr(2 * math.log(3.0))) == pytest.approx(0.25)


def test_logsnr_grid_is_uniform_in_log_snr_between_the_clipped_ends():
    # sigma/alpha from 2 down to 1/2 in equal ratios: 2, sqrt 2, 1, 1/sqrt 2, 1/2, i.e.
    # t = r / (1 + r); the ends (r = infinity and 0 at t = 1 and 0) are kept.
    got = logsnr_grid(LINEAR, 4, smin=0.5, smax=2.0)
    r = math.sqrt(2.0)
    want = [1.0, r / (1 + r), 0.5, (1 / r) / (1 + 1 / r), 0.0]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_karras_grid_is_edms_sigmas_under_ve_and_uniform_in_the_ratio_at_rho_1():
    rho, n = 7.0, 6
    lo, hi = 0.002 ** (1 / rho), 80.0 ** (1 / rho)
    edm = [(hi + i / n * (lo - hi)) ** rho for i in range(n + 1)]  # Karras et al. eq. 5
    got = VE.sigma(karras_grid(VE, n, rho=rho))
    assert got.tolist() == pytest.approx(edm, rel=1e-9)
    # rho = 1: r = 2, 1.5, 1, 0.5 -> t = 0.6, 0.5 inside the kept ends
    assert karras_grid(LINEAR, 3, rho=1.0, smin=0.5, smax=2.0).tolist() == pytest.approx(
        [1.0, 0.6, 0.5, 0.0], abs=1e-12)


def test_power_grid_has_known_answers_and_is_the_even_grid_at_k_1():
    assert power_grid(LINEAR, 2, k=2.0).tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert power_grid(LINEAR, 2, 0.9, 0.1, k=2.0).tolist() == pytest.approx([0.9, 0.3, 0.1])
    assert torch.allclose(power_grid(LINEAR, 7, k=1.0), timesteps(7))


@pytest.mark.parametrize("name", ["logsnr", "karras", "power"])
@pytest.mark.parametrize("schedule", ["linear", "vp-cosine", "vp-linear", "ve"])
def test_every_named_grid_is_finite_and_keeps_the_ends_where_log_snr_is_infinite(name,
                                                                                schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # log(0) at the ends is clipped, never warned
        ts = named_grid(name, get_schedule(schedule), 16)
    assert ts.shape == (17,) and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    assert bool(torch.isfinite(ts).all()) and bool((ts[1:] < ts[:-1]).all())


def test_a_range_outside_the_clip_is_refused_not_collapsed():
    with pytest.raises(NoiseshiftError, match="repeated times"):
        logsnr_grid(LINEAR, 4, t_max=0.001, t_min=0.0)  # sigma/alpha < smin throughout


def test_grid_names_parse_with_their_parameters_and_refuse_others():
    assert parse_grid_name("karras") == ("karras", {})
    assert parse_grid_name("karras:rho=5,smin=0.01") == ("karras", {"rho": 5.0, "smin": 0.01})
    assert parse_grid_name("logsnr:smin=0.01:smax=20") == ("logsnr",
                                                           {"smin": 0.01, "smax": 20.0})
    assert parse_grid_name("1,0.5,0") is None
    assert parse_timesteps("power:k=3") == "power:k=3"
    assert parse_timesteps("1,0.5,0") == [1.0, 0.5, 0.0]
    with pytest.raises(NoiseshiftError, match="takes rho, smin, smax"):
        parse_grid_name("karras:k=2")
    with pytest.raises(NoiseshiftError, match="must be a number"):
        parse_grid_name("power:k=two")


def test_a_named_grid_follows_the_steps_and_is_recorded_as_its_times():
    model = MixtureDenoiser(make_gmm(dim=4, components=2, std=0.3, seed=0).mixture, LINEAR)
    want = named_grid("karras", LINEAR, 5)
    a = sample(model, 8, sampler="dpmpp-2m", steps=5, seed=1, timesteps="karras")
    b = sample(model, 8, sampler="dpmpp-2m", steps=99, seed=1, timesteps=want.tolist())
    assert torch.equal(a, b)
    spec = RunSpec.for_model(model, n=4, steps=5, timesteps="karras")
    assert spec.steps == 5 and spec.settings["timesteps"] == want.tolist()
    with pytest.raises(NoiseshiftError, match="needs the model's schedule"):
        sampler_settings("euler", 5, timesteps="karras")


def test_the_command_line_and_tune_carry_the_name():
    assert sampler_options("heun", None, None, "logsnr") == {"timesteps": "logsnr"}
    with pytest.raises(NoiseshiftError, match="built-in samplers"):
        diffusers_timesteps("karras")
    c = Candidate("dpmpp-2m@logsnr", "dpmpp-2m", {"timesteps": "logsnr"})
    assert c.flags(16)[-2:] == ["--timesteps", "logsnr"]
    assert c.keywords(16) == {"sampler": "dpmpp-2m", "steps": 16, "timesteps": "logsnr"}
