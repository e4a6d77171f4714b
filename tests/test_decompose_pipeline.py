"""`noiseshift decompose` on runs recorded from a diffusers pipeline: a tiny DDPMPipeline
(random weights: the plumbing and the exact identities are checked, not the numbers) saved to
a folder, sampled with `sample --model diffusers:DIR`, then decomposed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")

from helpers import cli_exit_2  # noqa: E402

from noiseshift.analysis.decompose import PAIRED  # noqa: E402
from noiseshift.cli import app  # noqa: E402
from noiseshift.data import load_data  # noqa: E402
from noiseshift.errors import NoiseshiftError  # noqa: E402
from noiseshift.estimators import LearnedEstimator  # noqa: E402
from noiseshift.integrations.diffusers import load_pipeline, record  # noqa: E402
from noiseshift.integrations.pipeline_decompose import (  # noqa: E402
    UNPAIRED,
    decompose_pipeline_run,
    scheduler_order,
)
from noiseshift.integrations.tiny import tiny_unet  # noqa: E402
from noiseshift.io import open_trajectories  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
DATA = {"name": "digits", "side": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A pipeline folder and an estimator for its states (vp-cosine, 1x8x8)."""
    out = tmp_path_factory.mktemp("pipedec")
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    diffusers.DDPMPipeline(unet=tiny_unet((1, 8, 8), channels=(8, 16)),
                           scheduler=sched).save_pretrained(out / "ddpm")
    est = LearnedEstimator(steps=4, train_batch=32, calib_points=8, calib_samples=16,
                           device="cpu").fit(load_data(DATA), "vp-cosine")
    return out / "ddpm", est.save(out / "est.pt"), est


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _sample(folder, path, *extra):
    res = _cli("sample", "--model", f"diffusers:{folder}", "--steps", 4, "--n", 16,
               "--record", path, "--data", "digits:8", "--json", *extra)
    assert res.exit_code == 0, res.output
    return open_trajectories(path).run("unguided")


def _copy(setup, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(setup[0], folder)
    return folder


def _refused(capsys, argv, message):
    lines = cli_exit_2(argv, capsys)
    assert len(lines) == 1 and message in lines[0], lines


def _exact_sum(dec):
    for table in (dec.table, dec.bands):
        np.testing.assert_allclose(table.total, table.sampler + table.network, atol=1e-12)


def test_ddim_run_is_redrawn_bit_for_bit_and_pairs_sample_by_sample(setup, tmp_path):
    run = _sample(setup[0], tmp_path / "t.h5", "--scheduler", "ddim", "--spacing", "trailing")
    dec = decompose_pipeline_run(run, setup[2], load_data(DATA), k=2, n_boot=50)
    assert dec.reproduced == 0.0 and dec.pairing == PAIRED and dec.t_gap == 0.0
    _exact_sum(dec)
    # Trailing spacing at k = 2 puts the fine run's first state at the run's first t, from
    # the same latents: paired, coarse - fine is exactly 0 there, CI included.
    first = dec.table.iloc[0]
    assert (first.coarse_minus_fine, first.coarse_minus_fine_lo,
            first.coarse_minus_fine_hi) == (0.0, 0.0, 0.0)
    assert dec.table.coarse_minus_fine.iloc[1:].abs().max() > 0


def test_stochastic_scheduler_is_compared_by_distribution(setup, tmp_path):
    run = _sample(setup[0], tmp_path / "t.h5")  # the folder's own DDPMScheduler
    dec = decompose_pipeline_run(run, setup[2], load_data(DATA), k=2, n_boot=50)
    assert dec.reproduced == 0.0 and dec.pairing == UNPAIRED
    _exact_sum(dec)


def test_command_prints_the_parts_as_json(setup, tmp_path):
    _sample(setup[0], tmp_path / "t.h5", "--scheduler", "ddim", "--spacing", "trailing")
    res = _cli("decompose", tmp_path / "t.h5", "-e", setup[1], "--k", 2, "--bootstrap", 20,
               "--json", "--plot", "--out", tmp_path / "d.png")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["reproduced_max_abs_diff"] == 0.0 and len(out["per_step"]) == 4
    assert (tmp_path / "d.png").is_file()


def test_changed_folder_is_refused(setup, tmp_path, capsys):
    folder = _copy(setup, tmp_path)
    _sample(folder, tmp_path / "t.h5", "--scheduler", "ddim")
    weights = next(folder.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight: the same names and sizes
    weights.write_bytes(bytes(data))
    _refused(capsys, ["decompose", str(tmp_path / "t.h5"), "-e", str(setup[1])],
             "has changed since the run was recorded")


def test_moved_folder_is_refused_then_found_by_its_fingerprint(setup, tmp_path, capsys):
    folder = _copy(setup, tmp_path)
    _sample(folder, tmp_path / "t.h5", "--scheduler", "ddim", "--spacing", "trailing")
    moved = folder.rename(tmp_path / "moved")
    _refused(capsys, ["decompose", str(tmp_path / "t.h5"), "-e", str(setup[1])],
             "is not here (moved?)")
    res = _cli("decompose", tmp_path / "t.h5", "-e", setup[1], "--k", 2, "--bootstrap", 20,
               "--model", f"diffusers:{moved}", "--per-step")
    assert res.exit_code == 0, res.output
    assert "pairing: sample by sample" in res.output and "max |diff| 0" in res.output


def test_run_without_seed_is_refused(setup, tmp_path):
    pipe = load_pipeline(setup[0], scheduler="ddim", device="cpu", progress=False)
    with record(pipe, tmp_path / "t.h5"):  # no seed given to the recorder
        pipe(batch_size=4, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    run = open_trajectories(tmp_path / "t.h5").run("unguided")
    with pytest.raises(NoiseshiftError, match="no seed"):
        decompose_pipeline_run(run, setup[2], load_data(DATA), k=2)


def test_named_estimator_is_refused(setup, tmp_path, capsys):
    _sample(setup[0], tmp_path / "t.h5", "--scheduler", "ddim")
    _refused(capsys, ["decompose", str(tmp_path / "t.h5"), "-e", "learned"], "-e est.pt")


def test_scheduler_orders():
    assert scheduler_order("DPMSolverMultistepScheduler", {"solver_order": 3}) == (3, False)
    assert scheduler_order("DPMSolverMultistepScheduler",
                           {"algorithm_type": "sde-dpmsolver++"}) == (1, True)
    assert scheduler_order("HeunDiscreteScheduler", {}) == (2, False)
    with pytest.raises(NoiseshiftError, match="cannot refine LMSDiscreteScheduler"):
        scheduler_order("LMSDiscreteScheduler", {})
