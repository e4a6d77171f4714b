"""Trajectory format v1 (noiseshift.io.trajectories, .writer, .validation): writer,
reader, validator. Estimates files are in test_io_estimates.py."""

from __future__ import annotations

import hashlib
import json
import re
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import run_digest
from make_bad_corpus import build, write_good

from noiseshift.errors import NoiseshiftError, TrajectoryError
from noiseshift.io import (
    FORMAT,
    VERSION,
    TrajectoryWriter,
    open_trajectories,
    validate,
)

N, SHAPE, S = 6, (2, 3, 3), 7


def fake_run(steps=S, n=N, shape=SHAPE, seed=0):
    g = np.random.default_rng(seed)
    xs = g.standard_normal((steps, n, *shape)).astype(np.float32)
    return np.linspace(1, 0, steps + 1)[:-1], xs, 0.5 * xs, g.standard_normal((n, *shape))


def record(path, run="baseline", *, steps=S, finish=True, seed=0, x0=True, overwrite=False,
           planned=None, stop_after=None, **kw):
    ts, xs, x0s, samples = fake_run(steps, seed=seed)
    sampler = {"name": "euler", "steps": steps if planned is None else planned}
    with TrajectoryWriter(path, run, n=N, shape=SHAPE, schedule={"name": "linear"},
                          sampler=sampler, guidance={"kind": "none"}, model={"m": 1},
                          seed=seed, overwrite=overwrite, **kw) as w:
        for i in range(steps if stop_after is None else stop_after):
            w.callback({"i": i, "t": ts[i], "x": torch.from_numpy(xs[i]),
                        "x0_pred": torch.from_numpy(x0s[i]) if x0 else None})
        if finish:
            w.finish(samples)
    return ts, xs, x0s, samples


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- round trip ------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    p = tmp_path / "traj.h5"
    labels = np.arange(N) % 3
    ts, xs, x0s, samples = record(p, labels=labels)
    with h5py.File(p, "r") as f:  # the raw layout an outside reader sees (DESIGN.md sec. 3)
        assert f.attrs["format"].decode() == FORMAT and f.attrs["version"] == VERSION
        g = f["runs/baseline"]
        assert g["t"].dtype == np.float64 and g["states"].dtype == np.float32
        assert g["states"].chunks == (1, N, *SHAPE) and g["states"].maxshape[0] is None
        assert g["labels"].dtype == np.int64 and g["samples"].shape == (N, *SHAPE)
        assert g.attrs["complete"] == np.True_
        assert json.loads(g.attrs["schedule"]) == {"name": "linear"}
    with open_trajectories(p) as tf:
        assert tf.runs == ["baseline"]
        r = tf.run("baseline")
        assert (r.name, r.n, r.shape, r.num_steps, r.complete) == ("baseline", N, SHAPE, S, True)
        assert r.t.dtype == np.float64 and np.array_equal(r.t, ts)
        assert np.array_equal(r.states[:], xs) and np.array_equal(np.asarray(r.x0_pred), x0s)
        assert np.array_equal(r.labels, labels) and r.labels.dtype == np.int64
        assert np.array_equal(r.samples[()], samples.astype(np.float32))
        assert np.array_equal(r.read_samples(), samples.astype(np.float32))
        assert r.attrs["schedule"] == {"name": "linear"}
        assert r.attrs["sampler"] == {"name": "euler", "steps": S}
        assert r.attrs["guidance"] == {"kind": "none"} and r.attrs["model"] == {"m": 1}
        assert r.attrs["seed"] == 0 and r.attrs["complete"] is True
        assert re.match(r"\d{4}-\d\d-\d\dT", r.attrs["created"])
        assert r.schedule.name == "linear"
    summary = validate(p)
    assert summary["valid"] and summary["runs"][0]["steps"] == S
    assert summary["runs"][0]["complete"] is True


def test_steps_view_indexing(tmp_path):
    p = tmp_path / "traj.h5"
    _, xs, _, _ = record(p)
    with open_trajectories(p) as tf:
        st = tf.run("baseline").states
        assert st.shape == xs.shape and len(st) == S
        assert np.array_equal(st[-1], xs[-1])
        assert np.array_equal(st[1:4, 2], xs[1:4, 2])
        assert np.array_equal(st[..., 0], xs[..., 0])
        assert np.array_equal(st[[0, 3]], xs[[0, 3]])
        with pytest.raises(IndexError):
            st[S]


def test_no_x0_and_no_labels(tmp_path):
    p = tmp_path / "traj.h5"
    record(p, x0=False)
    with open_trajectories(p) as tf:
        r = tf.run("baseline")
        assert r.x0_pred is None and r.labels is None
    record(tmp_path / "b.h5", save_x0=False)
    with open_trajectories(tmp_path / "b.h5") as tf:
        assert tf.run("baseline").x0_pred is None


def test_reader_never_modifies(tmp_path):
    p = tmp_path / "traj.h5"
    record(p)
    record(p, "other", finish=False)
    before = digest(p)
    validate(p)
    with open_trajectories(p) as tf:
        for r in tf:
            list(r.iter_chunks())
            r.fingerprint()
    assert digest(p) == before


# -- streaming -------------------------------------------------------------------------------

def test_iter_chunks_covers_every_state_once(tmp_path):
    p = tmp_path / "traj.h5"
    _, xs, x0s, _ = record(p)
    row = 4 * int(np.prod(SHAPE))
    with open_trajectories(p) as tf:
        r = tf.run("baseline")
        for max_bytes, per in ((1, 1), (2 * row + 5, 2), (10**9, N)):
            seen = np.zeros((S, N), dtype=int)
            for i, sl, block in r.iter_chunks(max_bytes=max_bytes):
                assert block.dtype == np.float32 and block.shape[0] <= per
                assert np.array_equal(block, xs[i, sl])
                seen[i, sl] += 1
            assert (seen == 1).all()
        got = np.stack([b for _, _, b in r.iter_chunks(what="x0_pred")])
        assert np.array_equal(got, x0s)


def test_iter_chunks_memory_stays_flat(tmp_path):
    """Streaming a 24 MiB run in 256 KiB blocks never holds more than a few blocks."""
    p = tmp_path / "big.h5"
    n, shape, steps = 96, (1, 64, 64), 16
    with TrajectoryWriter(p, "big", n=n, shape=shape, schedule="linear", steps=steps) as w:
        for i in range(steps):
            w.callback({"i": i, "t": 1 - i / steps, "x": np.full((n, *shape), i, np.float32),
                        "x0_pred": None})
        w.finish(np.zeros((n, *shape), np.float32))
    max_bytes = 256 * 1024
    with open_trajectories(p) as tf:
        r = tf.run("big")
        tracemalloc.start()
        total = 0
        for i, _, block in r.iter_chunks(max_bytes=max_bytes):
            assert (block == i).all()
            total += block.nbytes
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert total == steps * n * 4 * 64 * 64
    assert peak < 4 * max_bytes < total / 20


def test_validate_streams_nan_check(tmp_path):
    p = write_good(tmp_path / "nan.h5", mutate=lambda g, a: a["states"].__setitem__(
        (3, 0, 0), np.nan))
    with pytest.raises(TrajectoryError, match="NaN or Inf at step 3"):
        validate(p)
    assert validate(p, scan=False)["runs"][0]["steps"] == 5  # structure alone is fine


# -- incomplete runs -------------------------------------------------------------------------

def test_incomplete_run_is_valid_and_flagged(tmp_path):
    p = tmp_path / "traj.h5"
    _, xs, _, _ = record(p, finish=False, stop_after=3)
    with h5py.File(p, "r") as f:  # rows were reserved for all planned steps
        assert f["runs/baseline/states"].shape[0] == S and f["runs/baseline/t"].shape == (3,)
    with open_trajectories(p) as tf:
        r = tf.run("baseline")
        assert not r.complete and r.num_steps == 3 and r.samples is None
        assert r.states.shape == (3, N, *SHAPE) and np.array_equal(r.states[:], xs[:3])
    s = validate(p)
    assert s["valid"] and s["runs"][0]["complete"] is False


def test_exception_in_sampler_leaves_incomplete_run(tmp_path):
    p = tmp_path / "traj.h5"
    ts, xs, _, _ = fake_run()
    with pytest.raises(RuntimeError, match="boom"):
        with TrajectoryWriter(p, "r", n=N, shape=SHAPE, schedule="linear", steps=S) as w:
            for i in range(2):
                w.callback({"i": i, "t": ts[i], "x": xs[i], "x0_pred": None})
            raise RuntimeError("boom")
    with open_trajectories(p) as tf:
        assert tf.run("r").num_steps == 2 and not tf.run("r").complete


def test_diverged_state_keeps_earlier_steps(tmp_path):
    p = tmp_path / "traj.h5"
    ts, xs, _, _ = fake_run()
    bad = xs[2].copy()
    bad[0, 0, 0, 0] = np.inf
    with TrajectoryWriter(p, "r", n=N, shape=SHAPE, schedule="linear", steps=S) as w:
        w.callback({"i": 0, "t": ts[0], "x": xs[0], "x0_pred": None})
        w.callback({"i": 1, "t": ts[1], "x": xs[1], "x0_pred": None})
        with pytest.raises(TrajectoryError, match="NaN or Inf"):
            w.callback({"i": 2, "t": ts[2], "x": bad, "x0_pred": None})
    run = validate(p)["runs"][0]
    assert run["steps"] == 2 and run["complete"] is False


def test_fewer_and_more_steps_than_planned(tmp_path):
    p = tmp_path / "traj.h5"
    _, xs, _, _ = record(p, "fewer", planned=S + 4)
    record(p, "more", planned=2)
    record(p, "unknown", steps=3, planned=0)
    with open_trajectories(p) as tf:
        for name, steps in (("fewer", S), ("more", S), ("unknown", 3)):
            r = tf.run(name)
            assert r.complete and r.num_steps == steps
            assert r.states.dataset.shape[0] == steps  # trimmed to t when finished
        assert np.array_equal(tf.run("fewer").states[:], xs)


# -- several runs, overwrite -------------------------------------------------------------------

def test_several_runs_and_overwrite(tmp_path):
    p = tmp_path / "traj.h5"
    record(p, "baseline", seed=0)
    record(p, "nag", seed=1)
    before = run_digest(p, "baseline")
    with pytest.raises(TrajectoryError, match="run 'nag' already exists"):
        record(p, "nag", seed=2)
    _, xs, _, _ = record(p, "nag", seed=2, overwrite=True)
    assert run_digest(p, "baseline") == before
    with open_trajectories(p) as tf:
        assert sorted(tf.runs) == ["baseline", "nag"]
        assert np.array_equal(tf.run("nag").states[:], xs) and tf.run("nag").attrs["seed"] == 2
    assert len(validate(p)["runs"]) == 2
    assert not list(tmp_path.glob(".*partial"))  # no temporaries left behind


def test_runs_of_different_shapes_in_one_file(tmp_path):
    p = tmp_path / "traj.h5"
    record(p, "images")
    with TrajectoryWriter(p, "vectors", n=3, shape=(5,), schedule="ve", steps=2) as w:
        w.callback({"i": 0, "t": 0.9, "x": np.zeros((3, 5)), "x0_pred": None})
        w.callback({"i": 1, "t": 0.4, "x": np.ones((3, 5)), "x0_pred": None})
        w.finish(np.ones((3, 5)))
    runs = {r["name"]: r for r in validate(p)["runs"]}
    assert runs["vectors"]["shape"] == [5] and runs["vectors"]["schedule"]["name"] == "ve"
    assert runs["images"]["shape"] == list(SHAPE)


def test_missing_run_names_file_run_and_existing(tmp_path):
    p = tmp_path / "traj.h5"
    record(p, "baseline")
    record(p, "nag")
    with open_trajectories(p) as tf, pytest.raises(TrajectoryError) as e:
        tf.run("cfg")
    msg = str(e.value)
    assert str(p) in msg and "'cfg'" in msg and "'baseline'" in msg and "'nag'" in msg


# -- what the writer refuses -------------------------------------------------------------------

def test_writer_never_clobbers_other_files(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("my notes")
    with pytest.raises(TrajectoryError, match="not a valid trajectory file"):
        record(p)
    assert p.read_text() == "my notes"
    with pytest.raises(TrajectoryError, match="does not exist"):
        record(tmp_path / "nope" / "traj.h5")


@pytest.mark.parametrize("info, match", [
    ({"t": 1.5}, r"must lie in \[0, 1\]"),
    ({"t": float("nan")}, r"must lie in \[0, 1\]"),
    ({"x": np.zeros((N + 1, *SHAPE))}, "has shape"),
])
def test_writer_rejects_bad_steps(tmp_path, info, match):
    step = {"i": 0, "t": 0.9, "x": np.zeros((N, *SHAPE)), "x0_pred": None, **info}
    with TrajectoryWriter(tmp_path / "t.h5", "r", n=N, shape=SHAPE, schedule="linear") as w:
        with pytest.raises(NoiseshiftError, match=match):
            w.callback(step)
    assert not (tmp_path / "t.h5").exists()  # nothing recorded, nothing created


def test_writer_rejects_t_not_decreasing_and_finish_without_steps(tmp_path):
    with TrajectoryWriter(tmp_path / "t.h5", "r", n=N, shape=SHAPE, schedule="linear") as w:
        with pytest.raises(TrajectoryError, match="no steps were recorded"):
            w.finish(np.zeros((N, *SHAPE)))
        w.callback({"i": 0, "t": 0.5, "x": np.zeros((N, *SHAPE)), "x0_pred": None})
        with pytest.raises(TrajectoryError, match="below the previous"):
            w.callback({"i": 1, "t": 0.5, "x": np.zeros((N, *SHAPE)), "x0_pred": None})
    with pytest.raises(NoiseshiftError, match="bad run name"):
        TrajectoryWriter(tmp_path / "u.h5", "a/b", n=N, shape=SHAPE, schedule="linear")
    with pytest.raises(NoiseshiftError, match="unknown schedule"):
        TrajectoryWriter(tmp_path / "u.h5", "a", n=N, shape=SHAPE, schedule="cosine-ish")


def test_symlinked_file_is_written_through_the_link(tmp_path):
    real = tmp_path / "data" / "traj.h5"
    real.parent.mkdir()
    record(real, "a")
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    record(link, "b")
    assert link.is_symlink()
    with open_trajectories(real) as tf:
        assert sorted(tf.runs) == ["a", "b"]


def test_new_file_gets_default_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        record(tmp_path / "t.h5")
    finally:
        os.umask(old)
    assert (tmp_path / "t.h5").stat().st_mode & 0o777 == 0o644


# -- validator rejections (one per corpus case; the CLI side is in test_bad_inputs.py) ---------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("bad"))


def test_validator_rejects_every_bad_case(corpus):
    checked = 0
    for name, (path, case) in corpus.items():
        if case.expect is None:
            validate(path)
            continue
        with pytest.raises(TrajectoryError) as e:
            validate(path)
        assert re.search(case.expect, e.value.problem), (name, e.value.problem)
        assert e.value.path == str(path)
        checked += 1
    assert checked >= 25


def test_outside_writer_example_in_spec_is_valid(tmp_path, monkeypatch):
    """The minimal h5py writer in docs/trajectory-format.md produces a valid file."""
    doc = (Path(__file__).parents[1] / "docs" / "trajectory-format.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "h5py.File" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "trajectory-format.md", "exec"), {})
    s = validate(tmp_path / "own.h5")
    assert s["runs"][0]["complete"] and s["runs"][0]["steps"] == 25
    assert s["runs"][0]["shape"] == [3, 32, 32]


def test_incomplete_run_by_outside_writer_may_reserve_rows(tmp_path):
    def reserve(g, a):
        a["states"] = np.concatenate([a["states"], np.zeros_like(a["states"][:2])])
        g.attrs["complete"] = False
        a["samples"] = None
    p = write_good(tmp_path / "r.h5", mutate=reserve)
    with open_trajectories(p) as tf:
        assert tf.run("baseline").states.shape[0] == 5
    assert validate(p)["runs"][0]["complete"] is False
