"""`noiseshift sample --model diffusers:DIR` end to end on tiny pipelines saved to a tmp folder
(random weights: only plumbing is checked), then `estimate`, `report` and `inspect` on the
file, and every bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")

from helpers import cli_exit_2  # noqa: E402

from noiseshift.cli import app  # noqa: E402
from noiseshift.data import load_data  # noqa: E402
from noiseshift.estimators import LearnedEstimator  # noqa: E402
from noiseshift.integrations.tiny import tiny_unet  # noqa: E402
from noiseshift.io import open_trajectories, validate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST_EST = dict(steps=4, train_batch=32, calib_points=8, calib_samples=16, device="cpu")


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "ddpm"
    unet = tiny_unet((1, 16, 16), channels=(8, 16))
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def estimators(tmp_path_factory):
    """Estimators for the pipeline's states (vp-cosine, 1x16x16), another shape, another
    schedule (a few training steps: only plumbing)."""
    out = tmp_path_factory.mktemp("est")
    paths = {}
    for key, side, schedule in (("good", 16, "vp-cosine"), ("shape", 8, "vp-cosine"),
                                ("schedule", 16, "linear")):
        data = load_data({"name": "digits", "side": side})
        est = LearnedEstimator(**FAST_EST).fit(data, schedule)
        paths[key] = est.save(out / f"{key}.pt")
    return paths


def _sample(ddpm_dir, path, *extra):
    return _json(_run("sample", "--model", f"diffusers:{ddpm_dir}", "--steps", 3, "--n", 4,
                      "--record", path, "--json", *extra))


def test_sample_records_a_run_and_a_grid(ddpm_dir, tmp_path):
    s = _sample(ddpm_dir, tmp_path / "t.h5", "--scheduler", "ddim", "--spacing", "trailing",
                "--grid", tmp_path / "g.png")
    assert s["run"] == "unguided" and s["baseline"] is None and s["shape"] == [1, 16, 16]
    assert s["sampler"] == {"name": "DDIMScheduler", "steps": 3, "spacing": "trailing"}
    assert (tmp_path / "g.png").stat().st_size > 0
    validate(tmp_path / "t.h5")
    with open_trajectories(tmp_path / "t.h5") as f:
        run = f.run("unguided")
        assert run.n == 4 and run.num_steps == 3 and run.complete
        assert run.attrs["sampler"]["name"] == "DDIMScheduler"
        assert run.attrs["sampler"]["spacing"] == "trailing"
        assert run.attrs["model"]["name"] == "DDPMPipeline"


def test_same_seed_same_samples(ddpm_dir, tmp_path):
    path = tmp_path / "t.h5"
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _sample(ddpm_dir, path, "--run", name, "--seed", seed)
    with h5py.File(path, "r") as f:
        a, b, c = (f[f"runs/{k}/samples"][()] for k in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_guided_run_beside_its_baseline_then_estimate_report_inspect(ddpm_dir, estimators,
                                                                     tmp_path):
    path, est = tmp_path / "t.h5", estimators["good"]
    s = _sample(ddpm_dir, path, "--nag-scale", 1.5, "--estimator", est)
    assert s["run"] == "nag-estimator-step-1.5" and s["baseline"] == "unguided"
    # a second guided run finds the baseline rather than recording another
    s2 = _sample(ddpm_dir, path, "--nag-scale", 3, "--estimator", est, "--nag-mode",
                 "estimator")
    assert s2["baseline"] == "unguided"
    # scale 0 and eps scaling: eps scaling alone is guidance too
    s3 = _sample(ddpm_dir, path, "--eps-scale", "1.01")
    assert s3["baseline"] == "unguided" and s3["run"] != "unguided"
    with open_trajectories(path) as f:
        assert sorted(f.runs) == sorted(["unguided", s["run"], s2["run"], s3["run"]])
        assert f.run(s["run"]).attrs["guidance"]["kind"] == s["run"]
    # the baseline is the unguided run with that seed: the same samples as a plain run
    plain = _sample(ddpm_dir, tmp_path / "plain.h5")
    with h5py.File(path, "r") as f, h5py.File(tmp_path / "plain.h5", "r") as g:
        np.testing.assert_array_equal(f["runs/unguided/samples"][()],
                                      g[f"runs/{plain['run']}/samples"][()])
        assert not np.array_equal(f["runs/unguided/samples"][()],
                                  f[f"runs/{s['run']}/samples"][()])

    res = _run("estimate", path, "-e", est, "--json")
    assert res.exit_code == 0, res.output
    res = _run("report", path, "--out", tmp_path / "rep", "--no-quality", "--bootstrap", 20)
    assert res.exit_code == 0, res.output
    res = _run("inspect", path, "--json")
    assert res.exit_code == 0 and "nag-estimator-step-1.5" in res.output, res.output


def test_estimate_without_an_estimator_says_what_to_do(ddpm_dir, tmp_path, capsys):
    _sample(ddpm_dir, tmp_path / "t.h5")
    _one_line(["estimate", str(tmp_path / "t.h5")], "--estimator est.pt", capsys,
              out=tmp_path / "t.estimates.h5")


def test_class_conditional_dit_takes_class(tmp_path):
    dit = diffusers.DiTTransformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
        num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=1000,
        norm_num_groups=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",))
    folder = tmp_path / "dit"
    diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=diffusers.DDIMScheduler(
        num_train_timesteps=100)).save_pretrained(folder)
    s = _sample(folder, tmp_path / "t.h5", "--class", 7, "--grid", tmp_path / "g.png")
    assert s["shape"] == [4, 4, 4] and (tmp_path / "g.png").exists()
    with open_trajectories(tmp_path / "t.h5") as f:
        run = f.run("unguided")
        assert run.n == 4 and run.shape == (4, 4, 4) and list(run.labels) == [7] * 4


# -- bad input: one line, exit 2, nothing written ---------------------------------------------

def _one_line(argv, message, capsys, out=None):
    err = cli_exit_2(argv, capsys)
    assert len(err) == 1 and message in err[0], err
    if out is not None:
        assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--scheduler", "heun"], "unknown scheduler 'heun'"),
    (["--scheduler", "flow-euler"], "does not fit a diffusion"),
    (["--scheduler", "euler"], "never calls scale_model_input"),
    (["--spacing", "odd"], "unknown spacing"),
    (["--nag-scale", "1", "--nag-mode", "cf"], "use --nag-mode estimator-step, estimator-noise"),
    (["--nag-scale", "1"], "needs --estimator est.pt"),
    (["--prompt", "a cat"], "takes no prompt"),
    (["--class", "3"], "not class-conditional"),
    (["--sampler", "heun"], "use --scheduler"),
    (["--grid", "g.jpg"], ".png"),
])
def test_bad_options(ddpm_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "t.h5"
    _one_line(["sample", "--model", f"diffusers:{ddpm_dir}", "--steps", "2", "--n", "2",
               "--record", str(out), *extra], message, capsys, out)


@pytest.mark.parametrize("key, message", [("shape", "shape (1, 8, 8)"),
                                          ("schedule", "trained for the linear schedule")])
def test_estimator_for_another_shape_or_schedule(ddpm_dir, estimators, tmp_path, capsys, key,
                                                 message):
    out = tmp_path / "t.h5"
    _one_line(["sample", "--model", f"diffusers:{ddpm_dir}", "--steps", "2", "--n", "2",
               "--nag-scale", "1", "--estimator", str(estimators[key]), "--record", str(out)],
              message, capsys, out)


def test_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    out = tmp_path / "t.h5"
    _one_line(["sample", "--model", f"diffusers:{tmp_path / 'junk'}", "--record", str(out)],
              "not a diffusers pipeline folder", capsys, out)


def test_damaged_pipeline_folder(ddpm_dir, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        (ddpm_dir / "model_index.json").read_text())  # no unet/, no scheduler/
    out = tmp_path / "t.h5"
    _one_line(["sample", "--model", f"diffusers:{folder}", "--record", str(out)],
              "diffusers cannot load this pipeline", capsys, out)


def test_without_the_extra_says_the_pip_command(ddpm_dir, tmp_path, capsys, monkeypatch):
    for name in list(sys.modules):
        if name == "diffusers" or name.startswith("diffusers."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    out = tmp_path / "t.h5"
    _one_line(["sample", "--model", f"diffusers:{ddpm_dir}", "--record", str(out)],
              "pip install 'noiseshift[diffusers]'", capsys, out)


@pytest.mark.parametrize("option", ["--scheduler", "--prompt"])
def test_diffusers_options_refused_for_builtin_models(tmp_path, capsys, option):
    value = "ddim" if option == "--scheduler" else "2"
    _one_line(["sample", option, value, "--record", str(tmp_path / "t.h5")],
              f"{option} applies to --model diffusers:DIR only", capsys, tmp_path / "t.h5")


def test_seed_sets_torch_generator_only(ddpm_dir, tmp_path):
    torch.manual_seed(123)
    a = _sample(ddpm_dir, tmp_path / "a.h5")
    torch.manual_seed(456)
    b = _sample(ddpm_dir, tmp_path / "b.h5")
    assert a["sample_mean"] == b["sample_mean"]


def test_guided_subset_beside_a_baseline_of_the_same_subset(ddpm_dir, estimators, tmp_path):
    path = tmp_path / "t.h5"
    sub = ("--steps", 4, "--record-n", 2, "--record-every", 2)
    _sample(ddpm_dir, path)  # "unguided": every sample and step, 3 steps: not a match
    s = _sample(ddpm_dir, path, "--nag-scale", 1, "--estimator", estimators["good"], *sub)
    assert s["baseline"] == "unguided-DDPM-4-seed0-n4"  # "unguided" is taken
    with open_trajectories(path) as f:
        for name in (s["run"], s["baseline"]):
            run = f.run(name)
            assert run.n == 2 and run.num_steps == 2 and run.complete
            assert run.attrs["sampler"]["recorded"] == {"n": 4, "samples": 2, "every": 2}
    same_folder = ddpm_dir / ".." / ddpm_dir.name  # another spelling, the same baseline
    again = _sample(same_folder, path, "--nag-scale", 2, "--estimator", estimators["good"], *sub)
    assert again["baseline"] == s["baseline"]


def test_text_to_image_call_takes_the_prompt():
    from noiseshift.errors import NoiseshiftError
    from noiseshift.integrations.pipeline_runs import pipeline_call

    class TextPipe:  # the call signature of StableDiffusionPipeline, no weights
        def __call__(self, prompt=None, num_inference_steps=50, guidance_scale=7.5,
                     num_images_per_prompt=1, generator=None, output_type="pil"):
            raise AssertionError

    kw, labels, call = pipeline_call(TextPipe(), n=3, steps=5, seed=0, prompt="a 7",
                                     cfg_scale=2.0)
    assert kw == {"num_inference_steps": 5, "output_type": "np", "prompt": "a 7",
                  "num_images_per_prompt": 3, "guidance_scale": 3.0} and labels is None
    assert call == {"prompt": "a 7", "guidance_scale": 3.0}
    with pytest.raises(NoiseshiftError, match="give --prompt"):
        pipeline_call(TextPipe(), n=3, steps=5, seed=0)
