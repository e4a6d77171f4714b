import json

import h5py
import numpy as np
import pytest
from helpers import cli_exit_2
from typer.testing import CliRunner

from noiseshift import pretrained
from noiseshift.cli import app
from noiseshift.io import open_trajectories, validate
from noiseshift.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def _json(res):
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def gmm_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "gmm.pt"
    res = _run("train", "--data", "gmm", "--dim", 8, "--steps", 30, "--batch-size", 32,
               "--out", out, "--json")
    summary = _json(res)
    assert summary["steps"] == 30 and summary["kind"] == "mlp" and summary["num_classes"] == 8
    return out


def test_train_writes_a_loadable_checkpoint(gmm_model):
    model = load_model(gmm_model)
    assert model.config["data"]["name"] == "gmm" and model.supports_null_t
    assert gmm_model.with_name("gmm.state.pt").exists()


def test_train_resume_extends(tmp_path):
    out = tmp_path / "m.pt"
    _json(_run("train", "--data", "gmm", "--dim", 4, "--steps", 10, "--out", out, "--json"))
    res = _json(_run("train", "--data", "gmm", "--dim", 4, "--steps", 15, "--out", out,
                     "--resume", "--json"))
    assert res["steps"] == 15


def test_train_user_array_and_table(tmp_path):
    np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(64, 1, 8, 8)))
    res = _run("train", "--data", tmp_path / "data.npy", "--steps", 3, "--batch-size", 8,
               "--out", tmp_path / "img.pt")
    assert res.exit_code == 0, res.output
    assert "Trained unet denoiser" in res.stdout and "final loss" in res.stdout
    assert load_model(tmp_path / "img.pt").shape == (1, 8, 8)


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.npy"], "no such file"),
    (["--data", "gmm", "--schedule", "cosine"], "unknown schedule"),
    (["--data", "gmm", "--prediction", "v"], "unknown prediction"),
    (["--data", "gmm", "--arch", "unet"], "UNet"),
])
def test_train_bad_input_is_one_line(tmp_path, args, message, capsys):
    _one_line_error(["train", *args, "--out", str(tmp_path / "x.pt")], message, capsys)


def _one_line_error(argv, message, capsys):
    """Run the console entry point: a user mistake is one line on stderr and exit 2."""
    err = cli_exit_2(argv, capsys)
    assert err[-1].startswith("error:") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_sample_records_and_overwrites(gmm_model, tmp_path):
    traj = tmp_path / "t.h5"
    first = _json(_run("sample", "--model", gmm_model, "--n", 16, "--steps", 4,
                       "--record", traj, "--json"))
    assert first["run"] == "unguided" and not first["overwrote"]
    info = validate(traj)
    run = info["runs"][0]
    assert run["name"] == "unguided" and run["complete"]
    with h5py.File(traj) as f:
        g = f["runs/unguided"]
        assert g["states"].shape == (4, 16, 8) and g["x0_pred"].shape == (4, 16, 8)
        assert list(g["t"][()]) == [1.0, 0.75, 0.5, 0.25]
        assert json.loads(g.attrs["guidance"]) == {"kind": "none"}
        sampler = json.loads(g.attrs["sampler"])
        assert sampler["name"] == "euler-maruyama" and sampler["steps"] == 4
        assert g["labels"].shape == (16,)
        first_samples = g["samples"][()]
    again = _run("sample", "--model", gmm_model, "--n", 16, "--steps", 4, "--record", traj)
    assert again.exit_code == 0 and "overwrote it" in again.stdout
    with open_trajectories(traj) as f:
        assert f.runs == ["unguided"]
        # Same seed, same samples, bit for bit.
        assert np.array_equal(np.asarray(f.run("unguided").samples), first_samples)


def test_sample_named_run_other_sampler_and_no_record(gmm_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _json(_run("sample", "--model", gmm_model, "--n", 8, "--steps", 3, "--sampler", "ddim",
               "--eta", "1", "--run", "ddim-run", "--class", 2, "--json"))
    with open_trajectories(tmp_path / "trajectories.h5") as f:
        run = f.run("ddim-run")
        assert run.attrs["sampler"]["eta"] == 1.0
        assert np.all(np.asarray(run.labels) == 2)
    res = _json(_run("sample", "--model", gmm_model, "--n", 8, "--steps", 3, "--no-record",
                     "--json"))
    assert res["record"] is None


def test_sample_grid_for_images(tmp_path):
    np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(32, 8, 8)))
    _run("train", "--data", tmp_path / "data.npy", "--steps", 2, "--out", tmp_path / "i.pt")
    res = _run("sample", "--model", tmp_path / "i.pt", "--n", 6, "--steps", 2, "--no-record",
               "--grid", tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_default_model_is_trained_once_and_cached(tmp_path, monkeypatch):
    # A tiny stand-in recipe: the real default takes minutes.
    monkeypatch.setenv("NOISESHIFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pretrained.DEFAULT_DATA, "side", 8)
    monkeypatch.setitem(pretrained.DEFAULT_DENOISER, "steps", 2)
    monkeypatch.setitem(pretrained.DEFAULT_DENOISER, "batch_size", 8)
    monkeypatch.setitem(pretrained.DEFAULT_DENOISER, "channels", [4, 8])
    args = ["sample", "--n", 4, "--steps", 2, "--no-record", "--json"]
    _json(_run(*args))
    cached = list((tmp_path / "cache").glob("denoiser-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    a, b = _json(_run(*args)), _json(_run(*args))
    assert cached[0].stat().st_mtime_ns == stamp and a["sample_mean"] == b["sample_mean"]
    # A damaged cache file is retrained rather than trusted.
    cached[0].write_bytes(b"junk")
    _json(_run(*args))
    assert load_model(cached[0]).config["shape"] == [1, 8, 8]


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pt"], "no such file"),
    (["--model", "{bad}"], "not a noiseshift checkpoint"),
    (["--model", "{model}", "--class", "99"], "out of range"),
    (["--model", "{model}", "--sampler", "dpm"], "unknown sampler"),
    (["--model", "{model}", "--eta", "0.5"], "--eta applies"),
    (["--model", "{model}", "--grid", "g.jpg"], ".png"),
    (["--model", "{model}", "--grid", "g.png", "--no-record"], "image data"),
])
def test_sample_bad_input_is_one_line(gmm_model, tmp_path, args, message, capsys):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    args = [a.format(model=gmm_model, bad=tmp_path / "bad.pt") for a in args]
    _one_line_error(["sample", "--n", "4", "--steps", "2", *args], message, capsys)


def test_help_reads_like_documentation():
    for cmd in ("train", "sample"):
        res = _run(cmd, "--help")
        assert res.exit_code == 0
        assert "Example" in res.stdout
