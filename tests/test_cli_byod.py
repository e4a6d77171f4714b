"""Bring your own data on the command line: a user's own model gets a learned estimator
trained on first use (with a note), and its data spec travels in the checkpoint and the run."""

import json

from test_cli_estimate import cli  # the real entry point: (exit code, stdout, stderr)

from noiseshift import pretrained
from noiseshift.io import open_trajectories


def test_train_gmm_then_sample_with_estimator_nag(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(pretrained.DEFAULT_ESTIMATOR, "steps", 10)
    monkeypatch.setitem(pretrained.DEFAULT_ESTIMATOR, "calib_samples", 8)
    m = tmp_path / "m.pt"
    code, _, err = cli(capsys, monkeypatch, "train", "--data", "gmm", "--dim", "8", "--steps",
                       "5", "--out", m, "--json")
    assert code == 0, err
    traj = tmp_path / "t.h5"
    code, out, err = cli(capsys, monkeypatch, "sample", "--model", m, "--nag-scale", "1.5",
                         "--n", "8", "--steps", "4", "--record", traj)
    assert code == 0, err
    assert "note:" in err and "gmm" in err and "caching it at" in err
    with open_trajectories(traj) as tf:
        assert all(tf.run(r).attrs["model"]["data"]["name"] == "gmm" for r in tf.runs)
    # Later commands find the data without being told; a mismatched --data is one line.
    code, out, err = cli(capsys, monkeypatch, "estimate", traj, "-e", "variance", "--json")
    assert code == 0, err
    assert {r["estimator"] for r in json.loads(out)["results"]} == {"variance"}
    code, _, err = cli(capsys, monkeypatch, "sample", "--model", m, "--nag-scale", "1.5",
                       "--n", "4", "--steps", "2", "--no-record", "--data", "photos")
    assert code == 2 and "(3, 32, 32)" in err and len(err.strip().splitlines()) == 1


def test_encode_with_a_tiny_vae_then_read_the_latents(tmp_path, capsys, monkeypatch):
    import numpy as np
    import pytest

    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "imgs.npy", x)
    out = tmp_path / "lat.h5"
    code, stdout, err = cli(capsys, monkeypatch, "encode", "--vae", tmp_path / "vae", "--data",
                            tmp_path / "imgs.npy", "--out", out, "--batch-size", "2", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["shape"] == [4, 8, 8] and summary["scaling_factor"] == 0.5
    from noiseshift.data import load_data

    d = load_data(f"latents:{out}")
    assert d.shape == (4, 8, 8) and d.spec["scaling_factor"] == 0.5
    code, _, err = cli(capsys, monkeypatch, "encode", "--vae", tmp_path / "nope", "--data",
                       tmp_path / "imgs.npy", "--out", out)
    assert code == 2 and "no such folder" in err
