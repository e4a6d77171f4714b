"""The mode table (guidance.modes.MODES): every mode builds what its row says, needs what it
says, and the integrations and the CLI read the same rows."""

import re

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.data import Dataset
from noiseshift.errors import NoiseshiftError
from noiseshift.estimators import LearnedEstimator
from noiseshift.guidance import (
    DEFAULT_NAG_MODE,
    MODES,
    ClassifierFreeGuidance,
    build_guidance,
    classifier_free,
    parse_mode,
)
from noiseshift.integrations.guided import OutputGuidance
from noiseshift.integrations.k_diffusion import NAGDenoiser
from noiseshift.integrations.pipeline_runs import pipeline_guide
from noiseshift.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)
NULL_T = [m for m, s in MODES.items() if s.needs_null_t]
NO_NULL_T = [m for m, s in MODES.items() if not s.needs_null_t and s.on_output]


def _net(t_dropout: float):
    torch.manual_seed(0)
    model = build_model({"kind": "unet", "shape": list(SHAPE), "schedule": "linear",
                         "num_classes": 3, "t_dropout": t_dropout, "channels": [8, 16]})
    with torch.no_grad():  # the output layer starts at 0: make every branch differ
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def est():
    g = torch.Generator().manual_seed(0)
    z = F.interpolate(torch.randn(128, 1, 2, 2, generator=g), size=SHAPE[1:], mode="bilinear",
                      align_corners=False)
    data = Dataset(x=(z / z.std()).contiguous(), labels=None, spec={"name": "fields"})
    return LearnedEstimator(bins=16, steps=20, train_batch=32, calib_points=8,
                            calib_samples=8, device="cpu").fit(data, "linear")


def _states(n=6):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, *SHAPE, generator=g),
            torch.linspace(0.1, 0.95, n, dtype=torch.float64))


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_builds_its_row(mode, est):
    spec = parse_mode(mode)
    guided, desc = build_guidance(_net(0.3), nag_scale=1.0, nag_mode=mode, estimator=est)
    assert isinstance(guided, spec.wrapper)
    assert all(getattr(guided, k) == v for k, v in spec.options.items())
    assert desc["nag"]["mode"] == mode and desc["kind"] == f"nag-{mode}-1"
    assert tuple(desc["nag"]["interval"]) == spec.interval
    assert desc["nag"].get("cap") == spec.cap
    assert ("estimator" in desc["nag"]) == spec.needs_estimator


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_needs_what_its_row_says(mode, est):
    spec = MODES[mode]
    if spec.needs_estimator:
        with pytest.raises(NoiseshiftError, match=f"--nag-mode {mode} needs a noise-level"):
            build_guidance(_net(0.3), nag_scale=1.0, nag_mode=mode)
    else:
        build_guidance(_net(0.3), nag_scale=1.0, nag_mode=mode)
    no_null_t = _net(0.0)
    if spec.needs_null_t:
        with pytest.raises(NoiseshiftError, match="--t-dropout"):
            build_guidance(no_null_t, nag_scale=1.0, nag_mode=mode, estimator=est)
    else:
        build_guidance(no_null_t, nag_scale=1.0, nag_mode=mode, estimator=est)


def test_cfg_alone_in_any_mode_is_cfg(est):
    x, t = _states()
    y = torch.arange(len(t)) % 3
    want, _ = build_guidance(_net(0.3), cfg_scale=2.0)
    for mode in MODES:
        got, desc = build_guidance(_net(0.3), cfg_scale=2.0, nag_mode=mode)
        assert isinstance(got, ClassifierFreeGuidance) and desc["kind"] == "cfg-2"
        with torch.no_grad():
            assert torch.equal(got(x, t, y), want(x, t, y))


def test_unknown_mode_is_one_line_listing_every_mode():
    with pytest.raises(NoiseshiftError) as err:
        parse_mode("cf-bogus")
    assert "\n" not in str(err.value)
    assert all(m in str(err.value) for m in MODES)


@pytest.mark.parametrize("mode", NULL_T)
def test_integrations_refuse_exactly_the_null_t_modes(mode, est):
    allowed = ", ".join(NO_NULL_T)
    with pytest.raises(NoiseshiftError, match="null-t branch.*diffusers") as err:
        OutputGuidance(est, 1.0, schedule="linear", prediction="velocity", mode=mode)
    assert all(repr(m) in str(err.value) for m in NO_NULL_T)
    with pytest.raises(NoiseshiftError, match="null-t branch.*k-diffusion"):
        NAGDenoiser(lambda x, s: x, est, 1.0, convention="eps", mode=mode)
    with pytest.raises(NoiseshiftError, match=f"use --nag-mode {allowed}$"):
        pipeline_guide(None, est, nag_scale=1.0, nag_mode=mode)


@pytest.mark.parametrize("mode", NO_NULL_T)
def test_integrations_guide_the_other_modes_as_the_wrapper_does(mode, est):
    """OutputGuidance on a model's output equals the mode's wrapper around the model."""
    model = _net(0.0)
    x, t = _states()
    editor = OutputGuidance(est, 1.0, schedule="linear", prediction="velocity", mode=mode,
                            shape=SHAPE)
    direct, _ = build_guidance(model, nag_scale=1.0, nag_mode=mode, estimator=est)
    with torch.no_grad():
        for ti in (0.3, 0.9):
            tt = torch.full((len(x),), ti, dtype=torch.float64)
            got = editor(model(x, tt), x, ti)
            assert torch.allclose(got.double(), direct(x, tt).double(), atol=1e-5)


def test_sample_help_lists_every_mode_and_what_its_scale_means():
    res = CliRunner().invoke(app, ["sample", "--help"], env={"COLUMNS": "300"})
    # click wraps help at 80 columns and may break a line after a hyphen
    text = re.sub(r"(?<=\w)-\n\s+", "-", res.stdout)
    text = " ".join(text.replace("│", " ").split())
    assert f"Default {DEFAULT_NAG_MODE}." in text
    for mode, spec in MODES.items():
        assert f"{mode}: {spec.summary}" in text
        assert spec.scale in text
    assert "w/(1+w)" in text


def test_stacked_branches_run_in_blocks_bit_for_bit(monkeypatch):
    """CFG + cf NAG on more rows than one call holds: every model call stays within
    BRANCH_BLOCK rows, and the output is the one-call output bit for bit."""
    model, sizes = _net(0.3), []
    model.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    guided, _ = build_guidance(model, nag_scale=1.0, nag_mode="cf", cfg_scale=2.0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, *SHAPE, generator=g)
    t = torch.rand(200, generator=g, dtype=torch.float64) * 0.8
    y = torch.randint(3, (200,), generator=g)
    with torch.no_grad():
        blocked = guided(x, t, y)
        assert sizes == [256, 256, 88]
        monkeypatch.setattr(classifier_free, "BRANCH_BLOCK", 10_000)
        assert torch.equal(blocked, guided(x, t, y))
    assert sizes[3:] == [600]
