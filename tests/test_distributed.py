"""torchrun's world, tested at world size 2 with gloo on the CPU: recording, estimating and a
DDP training step give what one process gives. Two processes are spawned once (the same
`_work` runs in them and, at world size 1, in this process) and everything is compared
after."""

from __future__ import annotations

import json
import os
import runpy
import socket
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from noiseshift import distributed
from noiseshift.data import load_data
from noiseshift.estimation import estimate_file
from noiseshift.models import build_model
from noiseshift.recording import SamplerBackend, record_with_baseline, sample_and_record
from noiseshift.runspec import RunSpec
from noiseshift.sampling import block_shard, sample, sample_across_ranks
from noiseshift.training import denoiser_config, train_denoiser

N, STEPS = 40, 4  # 40 samples: blocks of 16, so rank 0 draws 32 and rank 1 draws 8


def _model():
    """A tiny untrained MLP denoiser on an 8-d mixture (only determinism matters here)."""
    torch.manual_seed(0)
    config = denoiser_config(load_data("gmm", dim=8), "linear", arch="mlp", width=32, depth=2)
    return build_model(config).eval()


def _work(folder: Path, tag: str) -> None:
    """What each rank does; at world size 1, what the single process does."""
    torch.set_num_threads(1)
    model = _model()
    common = dict(n=N, seed=5, sampler="euler-maruyama", steps=STEPS, device="cpu")
    sample_and_record(model, folder / f"{tag}.h5", "em", **common)
    spec = RunSpec.for_model(model, record_n=21, record_every=2,
                             **{k: v for k, v in common.items() if k != "device"})
    record_with_baseline(spec, SamplerBackend(model, device="cpu"), folder / f"{tag}-sub.h5")
    # The same input at both world sizes: the estimates file names its source.
    estimate_file(folder / "ws1.h5", "variance", out=folder / f"{tag}.est.h5",
                  device="cpu", max_bytes=8 * 4 * 7)  # blocks of 7 states: 24 blocks
    losses, resumed = [], []
    train = dict(batch_size=10, width=32, depth=2, device="cpu", seed=1)
    train_denoiser(load_data("gmm", dim=8), steps=3,
                   on_step=lambda info: losses.append(info["loss"]), **train)
    state = folder / f"{tag}.state.pt"  # rank 0 writes it; every rank resumes from it
    train_denoiser(load_data("gmm", dim=8), steps=2, checkpoint=state, **train)
    distributed.barrier()
    train_denoiser(load_data("gmm", dim=8), steps=4, checkpoint=state, resume=True,
                   on_step=lambda info: resumed.append(info["loss"]), **train)
    all_samples = sample_across_ranks(model, N, sampler="euler-maruyama", steps=STEPS,
                                      seed=5, device="cpu")
    if distributed.is_main():
        (folder / f"{tag}.json").write_text(json.dumps(
            {"losses": losses, "resumed": resumed, "samples": all_samples.numpy().tolist()}))


def _rank(rank: int, world_size: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    distributed.init("cpu")
    try:
        _work(Path(folder), f"ws{world_size}")
    finally:
        distributed.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        for name, g in f["runs"].items():
            out[f"{name}/attrs"] = {k: v for k, v in g.attrs.items() if k != "created"}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    assert not distributed.launched()
    _work(folder, "ws1")
    mp.start_processes(_rank, args=(2, _free_port(), str(folder)), nprocs=2, join=True,
                       start_method="spawn")
    return folder


def _same_files(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if k.endswith("/attrs"):
            assert {x: str(v) for x, v in da[k].items()} == {x: str(v) for x, v in db[k].items()}
        else:
            assert np.array_equal(da[k], db[k]), k


def test_sample_at_world_size_2_equals_world_size_1(runs):
    _same_files(runs / "ws1.h5", runs / "ws2.h5")
    a = json.loads((runs / "ws1.json").read_text())["samples"]
    assert a == json.loads((runs / "ws2.json").read_text())["samples"]


def test_subset_recording_is_the_same_and_keeps_all_samples(runs):
    _same_files(runs / "ws1-sub.h5", runs / "ws2-sub.h5")
    with h5py.File(runs / "ws1-sub.h5", "r") as f, h5py.File(runs / "ws1.h5", "r") as full:
        g, whole = f["runs/unguided"], full["runs/em"]
        assert g["states"].shape == (2, 21, 8) and list(g["t"]) == list(whole["t"][::2])
        assert np.array_equal(g["states"][()], whole["states"][::2, :21])
        assert np.array_equal(g["all_samples"][()], whole["samples"][()])
        assert json.loads(g.attrs["sampler"])["recorded"] == {"n": N, "samples": 21, "every": 2}


def test_estimate_at_world_size_2_equals_world_size_1(runs):
    assert (runs / "ws1.est.h5").read_bytes() == (runs / "ws2.est.h5").read_bytes()


def test_ddp_first_step_loss_equals_single_process(runs):
    a = json.loads((runs / "ws1.json").read_text())["losses"]
    b = json.loads((runs / "ws2.json").read_text())["losses"]
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_ddp_resume_continues_like_single_process(runs):
    a = json.loads((runs / "ws1.json").read_text())["resumed"]
    b = json.loads((runs / "ws2.json").read_text())["resumed"]
    assert len(a) == len(b) == 2  # steps 3 and 4, after resuming at step 2
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_samples_do_not_depend_on_the_split():
    """No process group needed: sample by index, in any shards of whole blocks."""
    torch.manual_seed(0)
    model = _model()
    full = sample(model, 50, sampler="ddim", steps=3, seed=2, eta=1.0, device="cpu")
    parts = [sample(model, 50, sampler="ddim", steps=3, seed=2, eta=1.0, device="cpu",
                    indices=block_shard(50, r, 3)) for r in range(3)]
    assert torch.equal(full, torch.cat(parts))
    assert sum(len(block_shard(50, r, 3)) for r in range(3)) == 50


def test_shards_without_torchrun_are_everything():
    assert distributed.world() == (0, 1) and distributed.gather(3) == [3]
    assert list(distributed.shard(10, 1, 3)) == [4, 5, 6]


def test_python_dash_m_noiseshift(monkeypatch, capsys):
    """`python -m noiseshift` is the CLI (run in this process: a new one costs seconds)."""
    monkeypatch.setattr(sys, "argv", ["noiseshift", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("noiseshift", run_name="__main__")
    assert e.value.code == 0 and "sample" in capsys.readouterr().out
