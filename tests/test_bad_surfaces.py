"""The bad-input corpus of the newer surfaces (issue 21), through every command that reads
that kind of input: exit 2, one line naming the problem, no traceback, and every input byte
for byte as it was. In-process through the real entry point, on tiny files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from make_bad_corpus import (
    _images,
    bad_arrays,
    bad_decompose_files,
    bad_image_folders,
    bad_model_folders,
    tiny_model,
    write_good,
)
from test_cli_inspect import cli

pytest.importorskip("PIL")


def tree_digest(path) -> str:
    """A hash of a file, or of every file under a folder (names and bytes)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
        [path] if path.is_file() else []
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + f.read_bytes())
    return h.hexdigest()


def refused(capsys, monkeypatch, args, inputs, expect) -> str:
    before = {p: tree_digest(p) for p in inputs}
    code, _, err = cli(capsys, monkeypatch, *args)
    assert code == 2, (args, code, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: ") and re.search(expect, err), (expect, err)
    assert {p: tree_digest(p) for p in inputs} == before, "an input changed"
    return err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("surfaces")
    return {"arrays": bad_arrays(folder / "arrays"),
            "images": bad_image_folders(folder / "images"),
            **bad_model_folders(folder / "models"),
            "decompose": bad_decompose_files(folder / "decompose"),
            "model": tiny_model(folder), "traj": write_good(folder / "good.h5"),
            "folder": folder}


def _data_commands(c, tmp: Path) -> dict[str, list]:
    """Every command that reads --data, up to where it reads it."""
    return {
        "train": ["train", "--out", tmp / "m.pt", "--steps", "1"],
        "train-estimator": ["train-estimator", "--out", tmp / "e.pt", "--steps", "1"],
        "sample": ["sample", "--model", c["model"], "--n", "2", "--steps", "1", "--record",
                   tmp / "t.h5"],
        "report": ["report", c["traj"], "--out", tmp / "rep", "--no-quality"],
        "audit": ["audit", "--steps", "2", "--n", "8", "--bootstrap", "20"],
        "encode": ["encode", "--vae", tmp, "--out", tmp / "lat.h5"],
    }


@pytest.mark.parametrize("kind", ["arrays", "images"])
@pytest.mark.parametrize("command", ["train", "train-estimator", "sample", "report", "audit",
                                     "encode"])
def test_bad_data_on_every_reader(corpus, capsys, monkeypatch, tmp_path, kind, command):
    args = _data_commands(corpus, tmp_path)[command]
    for name, (path, expect) in corpus[kind].items():
        data = f"latents:{path}" if name.endswith("_scale") else str(path)
        refused(capsys, monkeypatch, [*args, "--data", data], [path], expect)
    assert not any(tmp_path.iterdir()), "a command wrote something"


def test_pipeline_folders(corpus, capsys, monkeypatch, tmp_path):
    pytest.importorskip("diffusers")
    for path, expect in corpus["pipelines"].values():
        refused(capsys, monkeypatch, ["sample", "--model", f"diffusers:{path}", "--n", "2",
                                      "--steps", "1", "--record", tmp_path / "t.h5"],
                [path], expect)
    assert not (tmp_path / "t.h5").exists()


def test_vae_folders(corpus, capsys, monkeypatch, tmp_path):
    pytest.importorskip("diffusers")
    images = corpus["folder"] / "good_images"
    _images(images, [np.zeros((8, 8), np.uint8)] * 2)
    for path, expect in corpus["vaes"].values():
        refused(capsys, monkeypatch, ["encode", "--vae", path, "--data", images, "--out",
                                      tmp_path / "lat.h5"], [path, images], expect)
    assert not (tmp_path / "lat.h5").exists()


def test_foreign_files_for_decompose(corpus, capsys, monkeypatch):
    for path, expect, pass_model in corpus["decompose"].values():
        extra = ["--model", corpus["model"]] if pass_model else []
        refused(capsys, monkeypatch, ["decompose", path, "--run", "baseline", *extra],
                [path, corpus["model"]], expect)


SCHEDULER_CASES = [
    (["--scheduler", "diffusers:ScoreSdeVeScheduler"], r"no alphas_cumprod"),
    (["--scheduler", "diffusers:CMStochasticIterativeScheduler"], r"no alphas_cumprod"),
    (["--scheduler", "diffusers:VQDiffusionScheduler"], r"diffusers rejects"),
    (["--scheduler", "diffusers:NoSuchScheduler"], r"no scheduler 'NoSuchScheduler'"),
    (["--scheduler-config", "[1, 2]"], r"must be a JSON object"),
    (["--scheduler-config", "{bad"], r"not JSON"),
    (["--scheduler-config", '{"num_train_timesteps": 0}'], r"num_train_timesteps must be"),
    (["--scheduler-config", '{"beta_schedule": "wavy"}'], r"diffusers rejects"),
    (["--scheduler-config", '{"beta_start": -0.5}'], r"outside \(0, 1\]"),
    (["--scheduler-config", '{"beta_end": 1.5}'], r"outside \(0, 1\]"),
    (["--scheduler-config", '{"no_such_key": 1}'], r"takes no config key"),
    (["--spacing", "sideways"], r"unknown spacing 'sideways'"),
    (["--steps", "0"], r"--steps must be positive"),
    (["--steps", "-3"], r"--steps must be positive"),
    (["--steps", ","], r"--steps must be positive"),
    (["--steps", "2000"], r"--steps must be in 1\.\.1000"),
    (["--eta", "0.5"], r"--eta means nothing with --scheduler"),
]


@pytest.mark.parametrize("args, expect", SCHEDULER_CASES)
def test_audit_scheduler_cases(capsys, monkeypatch, args, expect):
    pytest.importorskip("diffusers")
    base = [] if "--scheduler" in args else ["--scheduler", "diffusers:DDIMScheduler"]
    refused(capsys, monkeypatch, ["audit", *base, *args, "--n", "8", "--bootstrap", "20"],
            [], expect)


def test_audit_options_that_need_a_scheduler(capsys, monkeypatch):
    refused(capsys, monkeypatch, ["audit", "--spacing", "trailing", "--scheduler-config", "{}"],
            [], r"--spacing and --scheduler-config mean nothing without --scheduler")
