"""Hub ids (`--model diffusers:ORG/NAME[@REV]`, `load_pipeline("ORG/NAME")`, `encode --vae
ORG/NAME`) resolved from a Hugging Face cache laid out on disk the way huggingface_hub lays
it out, with the network disabled: sockets refuse to connect, HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import socket

import h5py
import pytest
from typer.testing import CliRunner

diffusers = pytest.importorskip("diffusers")
hub_constants = pytest.importorskip("huggingface_hub.constants")

from helpers import cli_exit_2  # noqa: E402

from noiseshift.cli import app  # noqa: E402
from noiseshift.errors import NoiseshiftError  # noqa: E402
from noiseshift.integrations.diffusers import load_pipeline  # noqa: E402
from noiseshift.integrations.encode import load_vae  # noqa: E402
from noiseshift.integrations.hub import hub_id  # noqa: E402
from noiseshift.integrations.tiny import tiny_unet  # noqa: E402
from noiseshift.io import open_trajectories  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _snapshot(cache, repo: str, commit: str, branch: str = "main"):
    """The folder huggingface_hub keeps a repo's files at ``commit`` in, with ``branch``
    pointing at it (file_download's layout: models--ORG--NAME/{refs, snapshots})."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / branch).write_text(commit)
    return root / "snapshots" / commit


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache in HF_HOME, offline, and no socket may connect."""
    home = tmp_path / "hf"
    hub = home / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the client read the environment at import: point its constants at the same place
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return hub


@pytest.fixture
def cached_pipeline(cache):
    unet = tiny_unet((1, 16, 16), channels=(8, 16))
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(_snapshot(cache, "tiny-org/ddpm", COMMIT))
    return pipe


def test_an_id_is_told_from_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_id("google/ddpm-cifar10-32") == ("google/ddpm-cifar10-32", None)
    assert hub_id("google/ddpm-cifar10-32@v1.0") == ("google/ddpm-cifar10-32", "v1.0")
    assert hub_id("a/b/c") is None and hub_id("noslash") is None and hub_id("./x") is None
    (tmp_path / "google" / "ddpm").mkdir(parents=True)
    assert hub_id("google/ddpm") is None  # a folder that exists wins


def test_load_pipeline_by_id_from_the_cache_records_id_and_revision(cached_pipeline, tmp_path):
    pipe = load_pipeline("tiny-org/ddpm", scheduler="ddim", progress=False)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.hub_source == {"id": "tiny-org/ddpm", "revision": COMMIT}
    pinned = load_pipeline(f"tiny-org/ddpm@{COMMIT}", progress=False)
    assert pinned.hub_source["revision"] == COMMIT
    with pytest.raises(NoiseshiftError, match=r"hf download tiny-org/ddpm --revision v2"):
        load_pipeline("tiny-org/ddpm@v2")


def test_sample_by_id_then_a_guided_run_finds_it_as_baseline(cached_pipeline, cache, tmp_path):
    path = tmp_path / "traj.h5"
    common = ["sample", "--model", "diffusers:tiny-org/ddpm", "--scheduler", "ddim",
              "--steps", "3", "--n", "4", "--record", str(path), "--json"]
    first = runner.invoke(app, common)
    assert first.exit_code == 0, first.output
    guided = runner.invoke(app, [*common, "--eps-scale", "1.01"])
    assert guided.exit_code == 0, guided.output
    out = json.loads(guided.stdout)
    assert out["baseline"] == "unguided"
    with open_trajectories(path) as f:
        assert sorted(f.runs) == sorted(["unguided", out["run"]])
        model = f.run("unguided").attrs["model"]
    assert model["path"] == "tiny-org/ddpm" and model["revision"] == COMMIT
    # the same id at another snapshot is another model: its baseline is recorded anew
    cached_pipeline.save_pretrained(_snapshot(cache, "tiny-org/ddpm", OTHER))
    moved = runner.invoke(app, [*common, "--eps-scale", "1.01"])
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.stdout)["baseline"] != "unguided"


def test_a_missing_id_offline_is_one_line_exit_2(cache, tmp_path, capsys):
    lines = cli_exit_2(["sample", "--model", "diffusers:nobody/nothing", "--n", "2",
                        "--record", str(tmp_path / "t.h5")], capsys)
    assert len(lines) == 1
    assert "nobody/nothing: no such folder, and no such Hub id in the Hugging Face cache" \
        in lines[0]
    assert "hf download nobody/nothing" in lines[0] and "--allow-download" in lines[0]
    assert not (tmp_path / "t.h5").exists()
    lines = cli_exit_2(["sample", "--allow-download", "--n", "2"], capsys)
    assert lines == ["error: --allow-download applies to --model diffusers:DIR only"]


def test_encode_vae_by_id_from_the_cache(cache, tmp_path, capsys):
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2,
                                  block_out_channels=(8,), norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",))
    vae.save_pretrained(_snapshot(cache, "tiny-org/vae", COMMIT))
    loaded = load_vae("tiny-org/vae")
    assert loaded.source == f"tiny-org/vae@{COMMIT}"
    out = tmp_path / "lat.h5"
    res = runner.invoke(app, ["encode", "--vae", "tiny-org/vae", "--data", "digits",
                              "--size", "8", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f.attrs["vae"] == f"tiny-org/vae@{COMMIT}"
    lines = cli_exit_2(["encode", "--vae", "tiny-org/none", "--data", "digits",
                        "--out", str(out)], capsys)
    assert len(lines) == 1 and "hf download tiny-org/none" in lines[0]
