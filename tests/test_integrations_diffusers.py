"""noiseshift.integrations.diffusers against real diffusers pipelines built from config.

The known-answer bed is the Gaussian mixture's exact denoiser in UNet2DModel's clothes
(`MixtureUNet`): with a perfect model, any shift comes from the scheduler alone. Plumbing is
checked on random-weight UNet2DModel and DiT; one test trains a tiny DDPM on the digits.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from helpers import image_gmm  # noqa: E402

from noiseshift.data import load_data, make_gmm  # noqa: E402
from noiseshift.errors import NoiseshiftError  # noqa: E402
from noiseshift.estimation import estimate_file  # noqa: E402
from noiseshift.guidance import DEFAULT_NAG_MODE  # noqa: E402
from noiseshift.integrations.diffusers import (  # noqa: E402
    guide,
    load_pipeline,
    record,
    set_scheduler,
)
from noiseshift.integrations.mixture_unet import MixtureUNet  # noqa: E402
from noiseshift.integrations.tiny import cached_ddpm  # noqa: E402
from noiseshift.io import open_trajectories, validate  # noqa: E402
from noiseshift.pretrained import get_estimator  # noqa: E402

SHAPE = (1, 8, 8)  # the 64-d mixture seen as images
K_STYLE = ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler",
           "KDPM2DiscreteScheduler", "LMSDiscreteScheduler")
VP_SIGMAS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
             "UniPCMultistepScheduler")
pytestmark = pytest.mark.usefixtures("one_thread")


class LoopPipeline(DiffusionPipeline):
    """The standard sampling loop (init_noise_sigma, scale_model_input, step)."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size=4, num_inference_steps=10, generator=None):
        x = randn_tensor((batch_size, *self.unet.shape), generator=generator)
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(x, t) if hasattr(
                self.scheduler, "scale_model_input") else x
            out = self.unet(inp, t).sample
            x = self.scheduler.step(out, t, x, **step_kwargs(self.scheduler, generator)
                                    ).prev_sample
        return x


def step_kwargs(scheduler, generator) -> dict:
    """What diffusers pipelines do: pass generator only if step's signature takes it."""
    accepts = "generator" in inspect.signature(scheduler.step).parameters
    return {"generator": generator} if accepts else {}


def hand_loop(scheduler, unet, n, steps, seed):
    """An independent loop over the same scheduler: the expected (t, state) of every
    first-order call, written out per scheduler family, and the final sample."""
    g = torch.Generator().manual_seed(seed)
    x = randn_tensor((n, *SHAPE), generator=g) * getattr(scheduler, "init_noise_sigma", 1.0)
    scheduler.set_timesteps(steps)
    ts, states = [], []
    name = type(scheduler).__name__
    for i, t in enumerate(scheduler.timesteps):
        first = getattr(scheduler, "state_in_first_order", True)
        if name.startswith("FlowMatch"):
            sigma = float(scheduler.sigmas[i])
            tt, state = sigma, x
        elif name in K_STYLE:
            sigma = float(scheduler.sigmas[i])  # Heun: sigmas repeat as timesteps do
            tt, state = 2 / math.pi * math.atan(sigma), x / math.sqrt(1 + sigma**2)
        elif name in VP_SIGMAS:
            sigma = float(scheduler.sigmas[i])
            tt, state = 2 / math.pi * math.atan(sigma), x
        else:  # DDPM, DDIM: the table
            ac = float(scheduler.alphas_cumprod[int(t)])
            tt, state = 2 / math.pi * math.atan2(math.sqrt(1 - ac), math.sqrt(ac)), x
        if first:
            ts.append(tt)
            states.append(state.clone())
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(unet(inp, t).sample, t, x, **step_kwargs(scheduler, g)).prev_sample
    return np.array(ts), torch.stack(states), x


@pytest.fixture(scope="module")
def gmm():
    return image_gmm(SHAPE)


@pytest.fixture(scope="module")
def oracle(gmm):
    return get_estimator("oracle", gmm, "vp-cosine", device="cpu")


def mixture_pipe(gmm, scheduler):
    unet = MixtureUNet.for_scheduler(gmm.mixture, scheduler, SHAPE, data=gmm.spec)
    pipe = LoopPipeline(unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SCHEDULERS = {
    "ddpm": lambda: DDPMScheduler(clip_sample=False),
    "ddim-leading": lambda: DDIMScheduler(clip_sample=False),
    "ddim-trailing-v": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing",
                                             prediction_type="v_prediction"),
    "euler": lambda: EulerDiscreteScheduler(),
    "euler-karras": lambda: EulerDiscreteScheduler(use_karras_sigmas=True),
    "heun": lambda: HeunDiscreteScheduler(),
    "dpm++": lambda: DPMSolverMultistepScheduler(),
    "dpm-single": lambda: diffusers.DPMSolverSinglestepScheduler(),
    "unipc": lambda: diffusers.UniPCMultistepScheduler(),
    "euler-ancestral": lambda: diffusers.EulerAncestralDiscreteScheduler(),
    "kdpm2": lambda: diffusers.KDPM2DiscreteScheduler(),
    "lms": lambda: diffusers.LMSDiscreteScheduler(),
    "flow-euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_recorded_states_match_a_hand_written_loop(tmp_path, gmm, name):
    """States, t and samples equal an independent loop over the same scheduler; recording
    does not perturb sampling (same seed, same samples, bit for bit)."""
    pipe = mixture_pipe(gmm, SCHEDULERS[name]())
    plain = pipe(batch_size=4, num_inference_steps=6, generator=torch.Generator().manual_seed(3))
    f = tmp_path / "t.h5"
    params = inspect.signature(pipe.scheduler.step).parameters
    with record(pipe, f, seed=3):
        assert inspect.signature(pipe.scheduler.step).parameters == params
        out = pipe(batch_size=4, num_inference_steps=6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, plain)
    assert "step" not in pipe.scheduler.__dict__  # the class's step again
    ts, states, final = hand_loop(SCHEDULERS[name](), pipe.unet, 4, 6, 3)
    with open_trajectories(f) as tf:
        run = tf.run("unguided")
        assert run.complete and run.num_steps == len(ts) == 6
        np.testing.assert_allclose(run.t, ts, rtol=0, atol=1e-6)
        np.testing.assert_allclose(run.states[:], states.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(run.read_samples(), final.numpy())
        family = "linear" if name == "flow-euler" else "vp-cosine"
        assert run.attrs["schedule"]["name"] == family
        assert run.attrs["model"]["data"]["name"] == "gmm"
        # x0 of a perfect model from the first state: pure noise reads near the data mean
        assert run.attrs["sampler"]["name"] == type(pipe.scheduler).__name__


def test_integer_and_tensor_timesteps_give_the_same_run(tmp_path, gmm):
    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    runs = []
    for kind in ("tensor", "int"):
        sched = pipe.scheduler
        g = torch.Generator().manual_seed(0)
        x = randn_tensor((3, *SHAPE), generator=g)
        sched.set_timesteps(5)
        with record(pipe, tmp_path / f"{kind}.h5"):
            for t in sched.timesteps:
                t = int(t) if kind == "int" else t
                x = sched.step(pipe.unet(x, t).sample, t, x).prev_sample
        with open_trajectories(tmp_path / f"{kind}.h5") as tf:
            runs.append((tf.run("unguided").t, tf.run("unguided").states[:]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_first_step_shift_under_leading_spacing(tmp_path, gmm, oracle):
    """'leading' spacing starts at timestep T - T/n: pure noise (t = 1) labelled as less noisy.
    Its shift is 1 - t_nominal = 2/pi atan(sqrt(abar / (1 - abar))); the exact oracle reads the
    recorded first state as it reads true pure noise."""
    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    with record(pipe, tmp_path / "t.h5", max_samples=512):
        pipe(batch_size=512, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    ac = float(DDIMScheduler().alphas_cumprod[500])
    analytic = 2 / math.pi * math.atan(math.sqrt(ac / (1 - ac)))
    with open_trajectories(tmp_path / "t.h5") as tf:
        run = tf.run("unguided")
        t0, x0 = float(run.t[0]), torch.from_numpy(run.states[0])
    assert abs((1 - t0) - analytic) < 1e-12 and abs(analytic - 0.1800) < 1e-3
    read = oracle.predict(x0)[0]
    truth = oracle.predict(torch.randn(512, *SHAPE, generator=torch.Generator().manual_seed(9)))[0]
    measured = float(read.mean()) - float(oracle.reference(t0))
    expected = float(oracle.reference(1.0)) - float(oracle.reference(t0))
    se = math.sqrt(float(read.var()) / 512 + float(truth.var()) / 512)
    assert abs(float(read.mean()) - float(truth.mean())) < 4 * se
    assert abs(measured - expected) < 4 * se + 0.01
    assert measured > 0.03  # noisier than labelled


def test_shift_shrinks_as_steps_grow(tmp_path, gmm, oracle):
    """With a perfect model the shift is the scheduler's alone: mean |delta| over the steps of
    DDIM (leading) roughly halves per doubling of the steps (measured slope ~ -1)."""
    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    shift = {}
    for n in (4, 8, 16):
        f = tmp_path / f"{n}.h5"
        with record(pipe, f):
            pipe(batch_size=256, num_inference_steps=n, generator=torch.Generator().manual_seed(1))
        with open_trajectories(f) as tf:
            run = tf.run("unguided")
            deltas = [float(oracle.predict(torch.from_numpy(run.states[i]))[0].mean())
                      - float(oracle.reference(run.t[i])) for i in range(run.num_steps)]
        shift[n] = float(np.mean(np.abs(deltas)))
    assert shift[4] > shift[8] > shift[16]
    slope = math.log(shift[16] / shift[4]) / math.log(4)
    assert slope < -0.6, shift


def test_clip_sample_records_the_clamped_x0(tmp_path, gmm):
    pipe = mixture_pipe(gmm, DDPMScheduler(clip_sample=True))
    with record(pipe, tmp_path / "t.h5"):
        pipe(batch_size=8, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        x0 = f["runs/unguided/x0_pred"][:]
    assert np.abs(x0).max() <= 1.0 + 1e-6  # the mixture's own x0 goes beyond 1


def test_subsets_and_guided_runs_match_their_baseline(tmp_path, gmm, oracle):
    """max_samples/every record the same rows and steps for a guided run as its baseline;
    record outside guide records the guided states under the guidance's name; scale=0 is
    the unguided run bit for bit."""
    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    f = tmp_path / "t.h5"
    kw = dict(batch_size=6, num_inference_steps=10)
    with record(pipe, f, max_samples=4, every=3):
        base = pipe(**kw, generator=torch.Generator().manual_seed(0))
    with guide(pipe, oracle, 0.0):
        zero = pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(zero, base)
    with record(pipe, f, max_samples=4, every=3), guide(pipe, oracle, 2.0, mode="estimator"):
        guided = pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert "step" not in pipe.scheduler.__dict__
    assert not torch.equal(guided, base)
    with open_trajectories(f) as tf:
        b, g = tf.run("unguided"), tf.run("nag-estimator-2")
        assert b.n == g.n == 4 and b.num_steps == g.num_steps == 4
        np.testing.assert_array_equal(b.t, g.t)
        np.testing.assert_array_equal(g.read_samples(), guided[:4].numpy())
        assert g.attrs["guidance"]["nag"]["mode"] == "estimator"
        assert not np.array_equal(b.states[2], g.states[2])


def test_restored_on_exception_and_partial_run_kept(tmp_path, gmm):
    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    real = pipe.unet.forward
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return real(*a, **k)

    pipe.unet.forward = flaky
    with pytest.raises(RuntimeError, match="boom"):
        with record(pipe, tmp_path / "t.h5"), guide(pipe, None, 0.0):
            pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(0))
    assert "step" not in pipe.scheduler.__dict__
    assert "_noiseshift_step_hook" not in pipe.scheduler.__dict__
    summary = validate(tmp_path / "t.h5")
    assert summary["runs"][0]["steps"] == 3 and not summary["runs"][0]["complete"]


def test_random_unet_ddpm_pipeline_is_not_perturbed(tmp_path):
    """A real UNet2DModel (random weights) in DDPMPipeline, stochastic steps: same seed, same
    images with and without record."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=3, num_inference_steps=5, output_type="np")
    plain = pipe(**kw, generator=torch.Generator().manual_seed(5)).images
    with record(pipe, tmp_path / "t.h5"):
        rec = pipe(**kw, generator=torch.Generator().manual_seed(5)).images
    np.testing.assert_array_equal(plain, rec)
    with open_trajectories(tmp_path / "t.h5") as tf:
        run = tf.run("unguided")
        assert run.complete and run.shape == (1, 8, 8) and run.num_steps == 5
        assert run.attrs["model"]["network"] == "UNet2DModel"
        assert run.attrs["sampler"]["spacing"] == "leading"


def test_a_run_recorded_by_hand_is_the_baseline_of_a_pipeline_spec(tmp_path):
    """`record` around a plain pipeline call writes what `pipeline_spec` expects, so the
    library's guided run finds it as its baseline instead of recording another."""
    from noiseshift.integrations.pipeline_runs import pipeline_run, sample_pipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path / "t.h5"
    with record(pipe, path, seed=5):
        pipe(batch_size=3, num_inference_steps=4, output_type="np",
             generator=torch.Generator().manual_seed(5))
    spec, _ = pipeline_run(pipe, n=3, steps=4, seed=5, eps_scale=(1.01,))
    with open_trajectories(path) as tf:
        run = tf.run("unguided")
        assert spec.baseline().matches(run) and run.attrs["sampler"] == spec.attrs()["sampler"]
        assert not pipeline_run(pipe, n=3, steps=5, seed=5)[0].matches(run)
    out = sample_pipeline(pipe, path, n=3, steps=4, seed=5, eps_scale=(1.01,))
    assert out.baseline == "unguided" and out.run == spec.run
    with open_trajectories(path) as tf:
        assert sorted(tf.runs) == sorted(["unguided", spec.run])
        assert tf.run(spec.run).attrs["sampler"] == spec.attrs()["sampler"]


def test_dit_doubled_batch_records_one_half(tmp_path):
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, out_channels=8,
                                num_layers=1, num_attention_heads=2, attention_head_dim=8,
                                num_embeds_ada_norm=1000, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",))
    pipe = DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    with record(pipe, tmp_path / "t.h5"):
        out = pipe(class_labels=[1, 2, 3], guidance_scale=4.0, num_inference_steps=3,
                   generator=torch.Generator().manual_seed(0), output_type="pt").images
    with open_trajectories(tmp_path / "t.h5") as tf:
        run = tf.run("unguided")
        assert run.n == 3 and run.shape == (4, 4, 4) and run.num_steps == 3
        latents = torch.from_numpy(run.read_samples()) / vae.config.scaling_factor
    with torch.no_grad():  # the recorded samples are the latents the pipeline decoded
        decoded = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, out, rtol=0, atol=1e-6)


def test_bad_inputs_are_one_line_errors(tmp_path, gmm, oracle):
    class Plain:
        config = {}

    pipe = mixture_pipe(gmm, DDIMScheduler(clip_sample=False))
    bad = LoopPipeline.__new__(LoopPipeline)
    bad.__dict__.update(pipe.__dict__)
    object.__setattr__(bad, "scheduler", Plain())
    with pytest.raises(NoiseshiftError, match="cannot map Plain's noise levels.*supported: DDPM"):
        record(bad, tmp_path / "x.h5").__enter__()
    wrong = get_estimator("oracle", gmm, "linear", device="cpu")
    with pytest.raises(NoiseshiftError, match="trained for the linear schedule.*vp-cosine"):
        with guide(pipe, wrong, 1.0):
            pass
    flat = get_estimator("oracle", make_gmm(dim=64), "vp-cosine", device="cpu")
    with pytest.raises(NoiseshiftError, match=r"shape \(64,\).*\(1, 8, 8\)"):
        with record(pipe, tmp_path / "x.h5"), guide(pipe, flat, 1.0):
            pipe(batch_size=2, num_inference_steps=2)
    assert "step" not in pipe.scheduler.__dict__
    with pytest.raises(NoiseshiftError, match="null-t branch"):
        guide(pipe, oracle, 1.0, mode="cf").__enter__()
    with pytest.raises(NoiseshiftError, match="no model_index.json"):
        load_pipeline(tmp_path)
    with pytest.raises(NoiseshiftError, match="does not fit a diffusion"):
        set_scheduler(pipe, "flow-euler")
    with pytest.raises(NoiseshiftError, match="unknown scheduler"):
        set_scheduler(pipe, "plms")
    assert not (tmp_path / "x.h5").exists()


def test_saved_pipeline_loads_with_another_scheduler(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8,), norm_num_groups=8,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    pipe = load_pipeline(tmp_path / "pipe", scheduler="ddim", spacing="trailing")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"


def test_import_never_imports_the_libraries_and_missing_extra_says_pip():
    code = ("import sys; import noiseshift, noiseshift.integrations.diffusers, "
            "noiseshift.integrations.k_diffusion, noiseshift.integrations.mixture_unet; "
            "assert 'diffusers' not in sys.modules and 'k_diffusion' not in sys.modules; "
            "sys.modules['diffusers'] = None\n"
            "from noiseshift.integrations.diffusers import load_pipeline\n"
            "try:\n    load_pipeline('.')\nexcept Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("diffusers is not installed: pip install "
                                  "'noiseshift[diffusers]'")


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def trained(digits):
    """A tiny DDPM trained a few hundred steps on the digits, once per session (cached)."""
    torch.set_num_threads(1)
    return cached_ddpm(digits, steps=150, batch_size=32, channels=(8, 16))


@pytest.mark.parametrize("mode", [None, "estimator-noise"])
def test_nag_cuts_the_shift_of_a_trained_ddpm(tmp_path, trained, digits, mode):
    """Record a trained pipeline unguided and guided (the default mode, estimator-step, and
    estimator-noise); `estimate_file` reads the files as they are. Guided by the subspace
    posterior and read by the same meter, so this checks the signs and conversions of guide
    end to end, not NAG's merit."""
    sub = get_estimator("subspace", digits, "vp-cosine", device="cpu")
    f = tmp_path / "t.h5"
    kw = dict(batch_size=32, num_inference_steps=20, output_type="np")
    with record(trained, f, data=digits.spec, seed=0):
        trained(**kw, generator=torch.Generator().manual_seed(0))
    mode_kw = {} if mode is None else {"mode": mode}
    with record(trained, f, data=digits.spec, seed=0), guide(trained, sub, 3.0, **mode_kw):
        trained(**kw, generator=torch.Generator().manual_seed(0))
    res = {r.run: r for r in estimate_file(f, "subspace", device="cpu").results}
    shift = {name: float(np.mean([abs(s["delta"]) for s in r.records]))
             for name, r in res.items()}
    name = f"nag-{mode or DEFAULT_NAG_MODE}-3"
    assert DEFAULT_NAG_MODE == "estimator-step"
    assert set(shift) == {"unguided", name}
    assert shift[name] < 0.8 * shift["unguided"], shift


def test_example_records_estimates_guides_and_reports(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NOISESHIFT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "examples" / "diffusers_ddpm_digits.py"),
                           "--tiny", "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["name"]: r for r in validate(tmp_path / "trajectories.h5")["runs"]}
    assert set(runs) == {"unguided", "nag-estimator-step-1.5"}
    assert all(r["complete"] and r["steps"] == 6 and r["n"] == 32 for r in runs.values())
    assert (tmp_path / "report" / "report.md").is_file()
    assert "nag-estimator-step-1.5" in proc.stdout


def test_guide_edits_only_the_mean_of_a_learned_variance_output(gmm, oracle):
    sched = DDPMScheduler(clip_sample=False, variance_type="learned_range")
    pipe = mixture_pipe(gmm, sched)
    sched.set_timesteps(4)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    t = sched.timesteps[2]
    out = torch.cat([pipe.unet(x, t).sample, torch.full_like(x, 0.3)], dim=1)
    seen = []
    real = type(sched).step

    def spy(self, model_output, *a, **k):
        seen.append(model_output.clone())
        return real(self, model_output, *a, **k)

    sched.step = spy.__get__(sched)
    with guide(pipe, oracle, 2.0, interval=(0.0, 1.0)):
        sched.step(out, t, x, generator=torch.Generator().manual_seed(0))
    assert sched.step.__func__ is spy  # the user's own instance attribute is put back
    assert seen[0].shape == out.shape and torch.equal(seen[0][:, 1:], out[:, 1:])
    assert not torch.equal(seen[0][:, :1], out[:, :1])
