"""The silent cases of issue 21 (data lost, wrong data exiting 0) and what surrounds them:
outputs that are inputs, 16-bit images, values that overflow float32, a loss that goes
non-finite, blank --data, old data-spec keys, torchrun, killed ranks' shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from make_bad_corpus import _images, tiny_model, write_good
from test_bad_surfaces import refused
from test_cli_inspect import cli

from noiseshift import training
from noiseshift.data import load_data, parse_data_spec
from noiseshift.errors import NoiseshiftError
from noiseshift.io.shards import new_shard_path, stale_shards
from noiseshift.training import train_loop

INPUT = r"is one of this command.s inputs"


@pytest.fixture
def arrays(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = x.reshape(16, 64)
    return tmp_path


def test_writers_refuse_an_output_that_is_an_input(arrays, capsys, monkeypatch):
    npy, h5 = arrays / "x.npy", arrays / "x.h5"
    model = tiny_model(arrays)
    traj = write_good(arrays / "t.h5")
    link = arrays / "link.npy"
    link.symlink_to(npy)
    cases = [
        (["train", "--data", npy, "--out", npy, "--steps", "1"], [npy]),
        (["train", "--data", link, "--out", npy, "--steps", "1"], [npy]),
        (["train-estimator", "--data", npy, "--out", arrays / "." / "x.npy", "--steps", "1"],
         [npy]),
        (["sample", "--model", model, "--data", h5, "--record", h5, "--n", "2"], [h5]),
        (["sample", "--model", model, "--record", model, "--n", "2"], [model]),
        (["sample", "--model", model, "--grid", model, "--n", "2"], [model]),
        (["estimate", traj, "-e", model, "-o", model], [traj, model]),
        (["report", traj, "--out", traj], [traj]),
        (["decompose", traj, "--plot", "--out", traj], [traj]),
        (["audit", "--data", h5, "--plot", "--out", h5], [h5]),
        (["encode", "--vae", arrays, "--data", arrays, "--out", npy], [npy]),
    ]
    for args, inputs in cases:
        refused(capsys, monkeypatch, args, inputs, INPUT)


def test_encode_out_must_be_a_file_in_a_folder_that_exists(arrays, capsys, monkeypatch):
    for out, expect in ((arrays, r"is a folder"), (arrays / "no" / "l.h5", r"does not exist")):
        refused(capsys, monkeypatch, ["encode", "--vae", arrays, "--data", arrays, "--out",
                                      out], [arrays / "x.npy"], expect)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    _images(tmp_path, [ramp, ramp // 2])
    x = load_data(str(tmp_path), size=16).x
    assert x.shape == (2, 1, 16, 16)
    assert float((x >= 0.999).float().mean()) < 0.01  # main: 99.6% at +1.0
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    # a 16-bit ramp and the same ramp in 8 bits read the same, to 8-bit precision
    _images(tmp_path / "eight", [(ramp // 257).astype(np.uint8)] * 2)
    assert torch.allclose(load_data(str(tmp_path / "eight"), size=16).x[0], x[0], atol=0.02)


def test_non_native_byte_order_and_integral_float_labels_load(tmp_path):
    x = np.arange(4 * 64, dtype=">f4").reshape(4, 64)
    np.savez(tmp_path / "d.npz", x=x, labels=np.array([0.0, 1, 1, 0]))
    np.savez(tmp_path / "column.npz", x=x, labels=np.array([[0], [1], [1], [0]]))
    for name in ("d.npz", "column.npz"):
        d = load_data(str(tmp_path / name))
        assert torch.equal(d.x, torch.arange(4 * 64, dtype=torch.float32).reshape(4, 64))
        assert d.labels.tolist() == [0, 1, 1, 0] and d.num_classes == 2


def test_a_loss_that_goes_non_finite_stops_training_and_saves_nothing(tmp_path, capsys,
                                                                     monkeypatch):
    # --lr is bounded now, so the loss is made to diverge from inside: the command must
    # still stop in one line and write no checkpoint
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(8, 16)))
    out = tmp_path / "m.pt"
    step = training._optimizer_step
    monkeypatch.setattr(training, "_optimizer_step",
                        lambda *a, **k: step(*a, **k) * float("nan"))
    refused(capsys, monkeypatch, ["train", "--data", tmp_path / "d.npy", "--out", out,
                                  "--steps", "4", "--batch-size", "4", "--device", "cpu"],
            [tmp_path / "d.npy"], r"training loss is (nan|inf)")
    assert not out.exists()


def test_train_loop_refuses_a_nan_loss_before_its_checkpoint(tmp_path):
    net = torch.nn.Linear(2, 2)
    ckpt = tmp_path / "state.pt"
    with pytest.raises(NoiseshiftError, match=r"loss is nan at step 1"):
        train_loop(net, lambda m, b: m(b).sum() * float("nan"), lambda g: torch.ones(2, 2),
                   steps=3, checkpoint=ckpt, checkpoint_every=1, device="cpu")
    assert not ckpt.exists()


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_blank_data_is_refused_not_read_as_this_folder(text, capsys, monkeypatch, tmp_path):
    with pytest.raises(NoiseshiftError, match="--data is empty"):
        parse_data_spec(text)
    refused(capsys, monkeypatch, ["train", "--data", text, "--out", tmp_path / "m.pt"], [],
            r"--data is empty")


def test_a_side_without_bound_is_refused(capsys, monkeypatch, tmp_path):
    refused(capsys, monkeypatch, ["train", "--side", "1000000", "--out", tmp_path / "m.pt"],
            [], r"digits side must be in 8\.\.256")


def test_one_key_for_image_sides_and_old_specs_still_load(tmp_path):
    _images(tmp_path / "imgs", [np.zeros((8, 8), np.uint8)] * 2)
    assert parse_data_spec("digits", size=12)["side"] == 12
    assert parse_data_spec("photos")["side"] == 32 and "size" not in parse_data_spec("photos")
    new = parse_data_spec(str(tmp_path / "imgs"), size=12)
    assert new["side"] == 12 and "size" not in new
    old = {"name": "images", "path": str(tmp_path / "imgs"), "size": 12}
    # a checkpoint and a trajectory file written before the rename store "size"
    from noiseshift.models import build_model, load_model, save_model
    net = build_model({"kind": "mlp", "shape": [144], "schedule": "linear", "width": 8,
                       "depth": 1, "data": old})
    stored = load_model(save_model(net, tmp_path / "old.pt")).config["data"]
    path = write_good(tmp_path / "old.h5", mutate=lambda g, a: g.attrs.__setitem__(
        "model", json.dumps({"data": old})))
    with h5py.File(path, "r") as f:
        from_file = json.loads(f["runs/baseline"].attrs["model"])["data"]
    for spec in (stored, from_file):
        d = load_data(spec)
        assert d.shape == (1, 12, 12) and d.spec["side"] == 12
    assert load_data({"name": "photos", "size": 8, "split": "test"}).shape == (3, 8, 8)


def test_decompose_reads_runs_recorded_with_record_n_and_every(tmp_path, capsys, monkeypatch):
    model, traj = tiny_model(tmp_path), tmp_path / "t.h5"
    code, _, err = cli(capsys, monkeypatch, "sample", "--model", model, "--n", "6", "--steps",
                       "4", "--record-n", "3", "--record-every", "2", "--record", traj,
                       "--sampler", "euler", "--device", "cpu")
    assert code == 0, err
    code, out, err = cli(capsys, monkeypatch, "decompose", traj, "--k", "2", "--bootstrap",
                         "20", "--json")
    assert code == 0, err
    dec = json.loads(out)
    assert dec["n"] == 3 and len(dec["per_step"]) == 2 and dec["reproduced_max_abs_diff"] < 1e-5


def test_killed_ranks_shards_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "traj.h5"
    mine = new_shard_path(out, 0)
    mine.write_bytes(b"live")  # this process is alive: its shard stays
    dead = tmp_path / mine.name.replace(f"-{os.getpid()}.", "-999999999.")
    dead.write_bytes(b"dead")
    partial = tmp_path / f".{dead.name}.ab12.partial"
    partial.write_bytes(b"dead")
    assert stale_shards(out) == sorted([dead, partial])
    new_shard_path(out, 1)
    assert mine.exists() and not dead.exists() and not partial.exists()


def test_vae_loads_tell_diffusers_there_is_no_accelerate(tmp_path, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    from noiseshift.integrations import encode

    seen = {}

    def fake(path, **kw):
        seen.update(kw)
        raise OSError("stop here")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", fake)
    monkeypatch.setattr(encode, "quiet_load_kwargs", lambda: {"low_cpu_mem_usage": False})
    with pytest.raises(NoiseshiftError, match="cannot load an AutoencoderKL"):
        encode.load_vae(tmp_path)
    assert seen.get("low_cpu_mem_usage") is False


@pytest.mark.slow
def test_torchrun_prints_a_mistake_once_and_every_rank_exits_2(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m",
                        "noiseshift", "--", "train", "--data", str(tmp_path / "no.npy"),
                        "--out", str(tmp_path / "m.pt")], capture_output=True, text=True,
                       env=env, timeout=300, cwd=tmp_path)
    assert p.stderr.count("error: ") == 1 and "no such file" in p.stderr
    assert p.stderr.count("exitcode  : 2") == 2, p.stderr  # torchrun's report, per rank
