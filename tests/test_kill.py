"""SIGKILL during writes: the trajectory file stays readable with every recorded step intact,
runs already in the file survive, and `estimate` leaves nothing at its output path.

The writer torture forks writer processes and kills them at random moments (file creation,
adding a run to an existing file, replacing a run, any step, finishing); the CLI tests kill
the real `noiseshift sample --record` and `noiseshift estimate` commands.
`pytest --fuzz` runs the torture with many more kill points.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import run_digest
from make_bad_corpus import tiny_model as make_tiny_model
from make_bad_corpus import write_good
from test_cli_inspect import cli

from noiseshift.io import TrajectoryWriter, open_trajectories, validate

STEPS, N, DIM = 120, 8, 32
NOISESHIFT = Path(sys.executable).with_name("noiseshift")


def expected(i: int, run: str) -> np.ndarray:
    base = np.arange(N * DIM, dtype=np.float32).reshape(N, DIM)
    return base + 1000.0 * i + (0.25 if run == "base" else 0.5)


def write_run(path, run, wfd=None, overwrite=False) -> None:
    """Record `STEPS` known steps into `run`, reporting each finished step on `wfd`."""
    say = (lambda s: os.write(wfd, s.encode())) if wfd is not None else (lambda s: None)
    with TrajectoryWriter(path, run, n=N, shape=(DIM,), schedule="linear",
                          sampler={"name": "test", "steps": STEPS}, seed=0,
                          overwrite=overwrite) as w:
        say("ready\n")
        for i in range(STEPS):
            x = expected(i, run)
            w.callback({"i": i, "t": 1 - i / STEPS, "x": x, "x0_pred": x - 1})
            say(f"{i + 1}\n")
        w.finish(expected(STEPS, run))
        say("done\n")


def fork_writer(path, run, overwrite):
    """Start a writer in a forked child; returns (pid, read end of its progress pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, then leave without running pytest's teardown
        os.close(r)
        code = 0
        try:
            write_run(path, run, w, overwrite)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    return pid, r


def read_all(fd) -> list[str]:
    chunks = []
    while data := os.read(fd, 65536):
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode().split()


def wait_ready(fd) -> list[str]:
    buf = b""
    while b"ready\n" not in buf:
        data = os.read(fd, 64)
        assert data, "writer died before starting"
        buf += data
    return buf.decode().split()


def base_file(path) -> str:
    write_run(path, "base")
    return run_digest(path, "base")


def check_after_kill(path: Path, mode: str, said: list[str], base: str | None) -> str:
    """Every invariant a kill must keep; returns what the file held."""
    committed = max([int(s) for s in said if s.isdigit()], default=0)
    run = "base" if mode == "overwrite" else "new"
    if not path.exists():
        assert mode == "new" and committed == 0, "file vanished"
        return "no file yet"
    with h5py.File(path, "r") as f:  # plain h5py opens it, locks and all
        runs = set(f["runs"])
    validate(path)  # every run valid (an incomplete one is flagged, not an error)
    if mode == "append":
        assert run_digest(path, "base") == base, "the run already in the file changed"
    if mode == "overwrite" and run_digest(path, "base") == base:
        assert committed == 0, "old run still there after a step was reported done"
        return "old run intact"
    if run not in runs:
        assert committed == 0, f"{committed} steps reported but the run is missing"
        return "run not added yet"
    with open_trajectories(path) as tf:
        r = tf.run(run)
        steps = r.num_steps
        assert committed <= steps <= committed + 1, (committed, steps)
        for i in range(steps):
            assert np.array_equal(r.states[i], expected(i, run)), f"step {i} damaged"
            assert np.array_equal(r.x0_pred[i], expected(i, run) - 1), f"x0 {i} damaged"
        assert np.array_equal(r.t, 1 - np.arange(steps) / STEPS)
        assert not r.complete or (steps == STEPS and np.array_equal(
            r.samples[()], expected(STEPS, run)))
        return "complete" if r.complete else "incomplete"


def torture(tmp_path, mode: str, kills: int, seed: int) -> dict:
    folder = tmp_path / mode
    folder.mkdir()
    path = folder / "traj.h5"
    pristine = folder / "pristine.h5"
    base = None if mode == "new" else base_file(pristine)
    run = "base" if mode == "overwrite" else "new"

    def fresh():
        for q in folder.glob(".traj.h5.*"):
            q.unlink()
        path.unlink(missing_ok=True)
        if base is not None:
            path.write_bytes(pristine.read_bytes())

    fresh()
    pid, fd = fork_writer(path, run, mode == "overwrite")
    wait_ready(fd)
    t0 = time.perf_counter()
    os.waitpid(pid, 0)
    full = time.perf_counter() - t0
    assert read_all(fd)[-1] == "done"
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    for _ in range(kills):
        fresh()
        pid, fd = fork_writer(path, run, mode == "overwrite")
        said = wait_ready(fd)
        time.sleep(rng.uniform(0, 1.1 * full))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        said += read_all(fd)
        what = check_after_kill(path, mode, said, base)
        seen[what] = seen.get(what, 0) + 1
    return seen


@pytest.mark.parametrize("mode", ["new", "append", "overwrite"])
def test_writer_survives_sigkill(tmp_path, mode):
    seen = torture(tmp_path, mode, kills=20, seed=len(mode))
    assert sum(seen.values()) == 20


@pytest.mark.fuzz
@pytest.mark.parametrize("mode", ["new", "append", "overwrite"])
def test_writer_survives_many_sigkills(tmp_path, mode):
    seen = torture(tmp_path, mode, kills=300, seed=1)
    assert seen.get("incomplete", 0) > 100, seen  # most kills land mid-recording


# -- the real commands -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"))


def sample_cmd(model, path, steps=80, n=3000):
    return [str(NOISESHIFT), "sample", "--model", str(model), "--sampler", "euler-maruyama",
            "--steps", str(steps), "--n", str(n), "--seed", "3", "--record", str(path),
            "--run", "em", "--device", "cpu"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def recorded_steps(path) -> int:
    try:
        with open_trajectories(path) as tf:
            return tf.run("em").num_steps if "em" in tf.runs else 0
    except Exception:  # mid-write glimpses may fail; the test only needs a count
        return 0


def kill_at_step(cmd, path, step: int, timeout=120.0) -> None:
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while recorded_steps(path) < step:
            assert proc.poll() is None, "sample finished before it could be killed"
            assert time.monotonic() < deadline, "sample too slow"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def snapshot(path) -> dict:
    with open_trajectories(path) as tf:
        r = tf.run("em")
        return {"complete": r.complete, "t": r.t.copy(), "states": r.states[:],
                "x0_pred": r.x0_pred[:], "samples": None if r.samples is None
                else r.samples[()]}


@pytest.mark.slow
def test_sample_record_killed_then_rerun(tmp_path, tiny_model, capsys, monkeypatch):
    """Killed at random steps several times (each rerun replaces the killed run), the file
    opens, inspect says INCOMPLETE, and the recorded steps equal the finished run's."""
    path = tmp_path / "traj.h5"
    cmd = sample_cmd(tiny_model, path)
    partial = []
    for step in random.Random(7).sample(range(2, 70), 3):
        kill_at_step(cmd, path, step)
        code, out, _ = cli(capsys, monkeypatch, "inspect", path, "--json")
        assert code == 0 and [r["complete"] for r in json.loads(out)["runs"]] == [False]
        snap = snapshot(path)
        assert len(snap["t"]) >= step and snap["samples"] is None
        partial.append(snap)
    subprocess.run(cmd, env=env(), check=True, capture_output=True)  # rerun after the kills
    full = snapshot(path)
    assert full["complete"] and len(full["t"]) == 80
    for snap in partial:
        k = len(snap["t"])
        for key in ("t", "states", "x0_pred"):
            assert np.array_equal(snap[key], full[key][:k]), key
    assert not list(tmp_path.glob(".*partial"))


@pytest.fixture(scope="module")
def oracle_ckpt(tmp_path_factory):
    from make_bad_corpus import checkpoints

    return checkpoints(tmp_path_factory.mktemp("ckpt"))["oracle"]


@pytest.mark.slow
def test_estimate_killed_leaves_input_and_output_alone(tmp_path, oracle_ckpt, capsys,
                                                       monkeypatch):
    """SIGKILL `noiseshift estimate` mid-way: the input is byte-identical and nothing is at
    the output path (or, when one was there, it is unchanged); a rerun then works."""
    traj = tmp_path / "traj.h5"
    rng = np.random.default_rng(0)

    def many_states(g, a):
        steps, n = 20, 2000
        a["t"] = np.linspace(1, 0, steps + 1)[:-1]
        a["states"] = rng.standard_normal((steps, n, 8)).astype(np.float32)
        a["x0_pred"] = None
        a["samples"] = rng.standard_normal((n, 8)).astype(np.float32)
        a["labels"] = None

    write_good(traj, mutate=many_states)
    before = hashlib.sha256(traj.read_bytes()).hexdigest()
    out = tmp_path / "est.h5"
    cmd = [str(NOISESHIFT), "estimate", str(traj), "-e", str(oracle_ckpt), "-o", str(out),
           "--chunk-mib", "0.02", "--device", "cpu"]
    rng_kill = random.Random(1)
    for prior in (None, b"an earlier estimates file"):
        if prior is not None:
            out.write_bytes(prior)
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".est.h5.*.partial")):  # estimating has begun
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng_kill.uniform(0.0, 0.3))
        assert proc.poll() is None, "estimate finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert hashlib.sha256(traj.read_bytes()).hexdigest() == before
        if prior is None:
            assert not out.exists()
        else:
            assert out.read_bytes() == prior
        for q in tmp_path.glob(".est.h5.*.partial"):
            q.unlink()  # what a kill leaves: a hidden temporary beside the output
    code, _, err = cli(capsys, monkeypatch, *cmd[1:])  # the rerun, in-process
    assert code == 0, err
    assert validate(out)["kind"] == "estimates"
    assert hashlib.sha256(traj.read_bytes()).hexdigest() == before


def test_inspect_while_recording(tmp_path):
    """Another process can read a file while a run is being recorded into it."""
    path = tmp_path / "traj.h5"
    steps_r, steps_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            with TrajectoryWriter(path, "new", n=N, shape=(DIM,), schedule="linear",
                                  steps=STEPS) as w:
                for i in range(3):
                    w.callback({"i": i, "t": 1 - i / STEPS, "x": expected(i, "new"),
                                "x0_pred": None})
                os.write(steps_w, b"3\n")
                os.read(go_r, 1)  # hold the file open, mid-run, until the parent has looked
                w.finish(expected(0, "new"))
        except BaseException:
            code = 1
        os._exit(code)
    os.read(steps_r, 2)
    summary = validate(path)
    assert summary["runs"][0]["steps"] == 3 and summary["runs"][0]["complete"] is False
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert validate(path)["runs"][0]["complete"] is True
