"""DCW (guidance/dcw.py): the Haar pair it corrects in, the update's known answers, and the
correction wired through the samplers, `build_guidance`, the recorded run and the CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.data import GaussianMixture, MixtureDenoiser, make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.estimators.classical import haar_inverse, haar_level
from noiseshift.guidance import DCW, build_guidance, run_name, step_hook_of
from noiseshift.guidance.dcw import band_correct, dcw_step, strength
from noiseshift.models import save_model
from noiseshift.recording import SamplerBackend
from noiseshift.runspec import RunSpec
from noiseshift.sampling import sample
from noiseshift.training import train_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(seed, shape=(3, 2, 6, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _block_mean(d):
    """The Haar approximation band put back into pixels: each 2x2 block's mean."""
    pooled = torch.nn.functional.avg_pool2d(d, 2)
    return pooled.repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_haar_is_orthonormal_and_inverts():
    x = _images(0)
    low, details = haar_level(x)
    torch.testing.assert_close(haar_inverse(low, details), x, rtol=0, atol=1e-12)
    energy = low.pow(2).sum() + sum(b.pow(2).sum() for b in details)
    torch.testing.assert_close(energy, x.pow(2).sum(), rtol=1e-12, atol=0)
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)  # a constant block: all in LL, = 2
    low, details = haar_level(ones)
    assert float(low) == 2.0 and all(float(b) == 0.0 for b in details)


def test_equal_band_weights_are_the_pixel_form():
    x, y = _images(1), _images(2)
    for lam in (0.3, -0.05):
        want = x + lam * (x - y)
        torch.testing.assert_close(band_correct(x, y, lam, lam), want, rtol=0, atol=1e-12)
        torch.testing.assert_close(dcw_step(x, y, 0.5, lam, "pixel"), want, rtol=0, atol=0)


def test_wavelet_form_moves_the_low_band_only():
    """x + lam * (block mean of x - y): the detail bands of x stay as they were."""
    x, y, t = _images(3), _images(4), 0.6
    out = dcw_step(x, y, t, 0.5, "wavelet")
    torch.testing.assert_close(out, x + 0.3 * _block_mean(x - y), rtol=0, atol=1e-12)
    for a, b in zip(haar_level(out)[1], haar_level(x)[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # An odd side: the last row, outside every Haar block, takes the low band's weight.
    x, y = _images(5, (2, 1, 5, 4)), _images(6, (2, 1, 5, 4))
    out = band_correct(x, y, 0.2, 0.0)
    torch.testing.assert_close(out[..., 4, :], x[..., 4, :] + 0.2 * (x - y)[..., 4, :])
    torch.testing.assert_close(out[..., :4, :], x[..., :4, :] + 0.2 * _block_mean(
        (x - y)[..., :4, :]), rtol=0, atol=1e-12)


def test_a_state_at_the_target_is_left_alone():
    x = _images(7).float()
    for form in ("wavelet", "pixel"):
        assert torch.equal(dcw_step(x, x.clone(), 0.7, 0.3, form), x)


def test_strength_follows_t_in_the_wavelet_form_only():
    assert strength(0.02, 0.5, "wavelet") == pytest.approx(0.01)
    assert strength(0.02, 1.0, "wavelet") == pytest.approx(0.02)
    assert strength(0.02, 0.0, "wavelet") == 0.0
    assert strength(0.02, 0.3, "pixel") == 0.02
    with pytest.raises(NoiseshiftError, match="unknown DCW form"):
        strength(0.02, 0.3, "high")
    with pytest.raises(NoiseshiftError, match="pixel form"):
        dcw_step(torch.zeros(2, 8), torch.ones(2, 8), 0.5, 0.1, "wavelet")


@pytest.fixture(scope="module")
def mixture_model():
    return MixtureDenoiser(GaussianMixture.random(8, 3, seed=0), "linear")


@pytest.mark.parametrize("sampler", ["euler", "euler-maruyama", "ddim"])
def test_exact_mixture_scale_zero_is_bit_identical(mixture_model, sampler):
    kw = dict(sampler=sampler, steps=6, seed=1, device="cpu")
    plain = sample(mixture_model, 32, **kw)
    guided = DCW(mixture_model, 0.0, "pixel")
    assert torch.equal(sample(guided, 32, **kw), plain)
    # and a non-zero scale is the formula applied after every step but the last
    guided = DCW(mixture_model, -0.1, "pixel")
    out = sample(guided, 32, **kw)
    by_hand = sample(mixture_model, 32, step_hook=lambda i: (
        i["x_next"].double() - 0.1 * (i["x_next"] - i["x0_pred"]).double()).float(), **kw)
    assert torch.equal(out, by_hand) and not torch.equal(out, plain)


def test_build_guidance_names_and_describes_dcw(mixture_model):
    model, desc = build_guidance(mixture_model, dcw=0.01)
    assert desc["kind"] == "dcw-0.01" and run_name(desc) == "dcw-0.01"
    assert desc["dcw"] == {"scale": 0.01, "form": "wavelet", "strength": "t"}
    assert isinstance(model, DCW) and step_hook_of(model) is not None
    _, desc = build_guidance(mixture_model, eps_scale=1.01, dcw=-0.02, dcw_form="pixel")
    assert desc["kind"] == "eps-scale-1.01+dcw--0.02-pixel"
    plain, desc = build_guidance(mixture_model, dcw=0.0)
    assert plain is mixture_model and desc == {"kind": "none"}
    assert step_hook_of(mixture_model) is None
    with pytest.raises(NoiseshiftError, match="unknown DCW form"):
        build_guidance(mixture_model, dcw=0.1, dcw_form="both")


def test_recorded_dcw_run_uses_the_hook_and_keeps_its_baseline(mixture_model, tmp_path):
    guided, desc = build_guidance(mixture_model, dcw=-0.1, dcw_form="pixel")
    spec = RunSpec.for_model(mixture_model, n=16, steps=4, sampler="euler", guidance=desc)
    assert spec.run == "dcw--0.1-pixel" and spec.guided
    assert spec.baseline().guidance == {"kind": "none"}
    backend = SamplerBackend(mixture_model, guided, device="cpu")
    out, _ = backend.draw(spec, tmp_path / "t.h5")
    want = sample(guided, 16, sampler="euler", steps=4, seed=0, device="cpu")
    assert torch.equal(out, want)
    base, _ = backend.draw(spec.baseline())
    assert not torch.equal(base, out)


def test_cli_dcw_records_beside_the_baseline(tmp_path):
    data = make_gmm(dim=16, components=2, seed=0, n=128)
    net = train_denoiser(data, "linear", steps=2, batch_size=16, width=16, depth=1,
                         conditional=False, ema_decay=None)
    path = save_model(net, tmp_path / "m.pt")
    res = CliRunner().invoke(app, ["sample", "--model", str(path), "--n", "4", "--steps", "2",
                                   "--dcw", "-0.02", "--dcw-form", "pixel", "--eps-scale",
                                   "1.01", "--record", str(tmp_path / "t.h5"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["run"] == "eps-scale-1.01+dcw--0.02-pixel" and out["baseline"] == "unguided"
    assert out["guidance"]["dcw"]["form"] == "pixel"
    with pytest.raises(NoiseshiftError, match="--dcw-form pixel"):
        CliRunner().invoke(app, ["sample", "--model", str(path), "--n", "4", "--dcw", "0.1",
                                 "--no-record"], catch_exceptions=False)


# -- diffusers: DCW on the state scheduler.step returns ------------------------------------

def _fake_output(x, t):
    """A deterministic stand-in for a network's output (the formula is what is checked)."""
    return 0.5 * x + 0.01 * float(t) / 1000


def _loop(sch, steps: int, seed: int, after=None):
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    x = x * float(getattr(sch, "init_noise_sigma", 1.0))
    sch.set_timesteps(steps)
    for i, t in enumerate(sch.timesteps):
        inp = sch.scale_model_input(x, t) if hasattr(sch, "scale_model_input") else x
        out = _fake_output(inp, t)
        res = sch.step(out, t, x)
        x = res.prev_sample if after is None else after(i, t, x, out, res)
    return x


def test_diffusers_flow_euler_and_euler_follow_the_formula():
    """FlowMatchEuler, pixel form: prev + s (prev - (sample - sigma v)), as DCW's own
    scheduler does; Euler, wavelet form: the low band at s * t, t = 2/pi atan(sigma)."""
    pytest.importorskip("diffusers")
    import math
    from types import SimpleNamespace

    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    from noiseshift.integrations.diffusers import guide

    def flow(i, t, x, out, res):
        sigma = float(sch.sigmas[i])
        return res.prev_sample + 0.05 * (res.prev_sample - (x - sigma * out))

    def euler(i, t, x, out, res):
        lam = -0.1 * 2 / math.pi * math.atan(float(sch.sigmas[i]))
        d = (res.prev_sample - res.pred_original_sample).double()
        return (res.prev_sample + lam * _block_mean(d)).float()

    for make, form, scale, by_hand in (
            (lambda: FlowMatchEulerDiscreteScheduler(shift=3.0), "pixel", 0.05, flow),
            (EulerDiscreteScheduler, "wavelet", -0.1, euler)):
        sch = make()
        want = _loop(sch, 4, 0, by_hand)
        plain = _loop(sch, 4, 0)
        pipe = SimpleNamespace(scheduler=make())
        with guide(pipe, None, 0.0, dcw=scale, dcw_form=form) as g:
            got = _loop(pipe.scheduler, 4, 0)
        assert g.guidance["dcw"]["form"] == form
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-4)
        assert "step" not in pipe.scheduler.__dict__


def test_diffusers_real_ddim_pipeline_follows_the_formula(tmp_path):
    """A real (random-weight) UNet2DModel in DDIMPipeline, trailing spacing: the guided
    images equal the pipeline run with the formula written into step by hand."""
    pytest.importorskip("diffusers")
    import math

    from diffusers import DDIMPipeline, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

    from noiseshift.integrations.diffusers import guide

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=3, num_inference_steps=4, output_type="np")
    plain = pipe(**kw, generator=torch.Generator().manual_seed(1)).images
    with guide(pipe, None, 0.0, dcw=-0.2):
        got = pipe(**kw, generator=torch.Generator().manual_seed(1)).images
    original = pipe.scheduler.step
    ac = pipe.scheduler.alphas_cumprod

    def by_hand(out, t, x, *args, **kwargs):
        res = original(out, t, x, *args, **kwargs)
        a = float(ac[int(t)])
        lam = -0.2 * 2 / math.pi * math.atan2(math.sqrt(1 - a), math.sqrt(a))
        d = (res.prev_sample - res.pred_original_sample).double()
        res.prev_sample = (res.prev_sample + lam * _block_mean(d)).float()
        return res

    pipe.scheduler.step = by_hand
    want = pipe(**kw, generator=torch.Generator().manual_seed(1)).images
    del pipe.scheduler.step
    assert abs(got - want).max() < 1e-5 and abs(got - plain).max() > 1e-3
    # from the command line, beside its baseline; refused in one line where it cannot act
    pipe.save_pretrained(tmp_path / "pipe")
    common = ["sample", "--model", f"diffusers:{tmp_path / 'pipe'}", "--n", "2", "--steps",
              "2", "--record", str(tmp_path / "t.h5"), "--json"]
    res = CliRunner().invoke(app, [*common, "--dcw", "-0.2"], catch_exceptions=False)
    out = json.loads(res.stdout)
    assert out["run"] == "dcw--0.2" and out["baseline"] == "unguided"
    with pytest.raises(NoiseshiftError, match="DCW does not apply to DPMSolverMultistep"):
        CliRunner().invoke(app, [*common, "--dcw", "0.1", "--scheduler", "dpm++"],
                           catch_exceptions=False)
    pipe.scheduler = DPMSolverMultistepScheduler()
    with pytest.raises(NoiseshiftError, match="DCW does not apply to DPMSolverMultistep"):
        with guide(pipe, None, 0.0, dcw=0.1):
            pass
