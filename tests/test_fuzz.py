"""Fuzzing the trajectory and estimates readers (issue 7, part 3).

Hypothesis builds HDF5 files with random structure, attributes, dtypes, shapes and values,
mostly close to a valid file so that every check in the reader gets reached, and every reading
entry point must either succeed or raise TrajectoryError - never anything else. The default
run tries 100 files of each kind; `pytest --fuzz` tries 1500. Files with bytes flipped at
random are fuzzed too: those noiseshift wrote (a file from another writer, with
variable-length string attributes, can hang or crash the HDF5 library itself; see
docs/trajectory-format.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from make_bad_corpus import write_good

from noiseshift.errors import TrajectoryError
from noiseshift.io import (
    ESTIMATES_FORMAT,
    FORMAT,
    open_estimates,
    open_trajectories,
    validate,
)

FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
LONG = settings(FAST, max_examples=1500)

FLOATS = ["<f4", "<f8", ">f4", "<f2"]
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=8)  # HDF5 strings end at NUL
ODD = ["<i1", "<i8", ">u4", "?", "<c8", "S6", "vlen-str", "compound"]


# -- strategies --------------------------------------------------------------------------------

def mostly(value, other, tenths: int = 8):
    """`value` about tenths/10 of the time, else a draw from `other` (so that most files get
    past the first checks and reach the deeper ones)."""
    return st.integers(0, 9).flatmap(lambda k: st.just(value) if k < tenths else other)


def arrays(shape=None, dtypes=None):
    """(dtype name, numpy array) with values including NaN, Inf and extremes."""
    @st.composite
    def make(draw):
        kind = draw(st.sampled_from(dtypes or FLOATS * 3 + ODD))
        shp = shape if shape is not None else tuple(draw(
            st.lists(st.integers(0, 4), min_size=0, max_size=4)))
        if kind == "vlen-str":
            return kind, np.array(draw(st.lists(TEXT, min_size=1, max_size=3)),
                                  dtype=object)
        if kind == "compound":
            return kind, np.zeros(shp, dtype=[("a", "<f4"), ("b", "<i2")])
        dt = np.dtype(kind)
        return kind, draw(hnp.arrays(dt, shp, elements=_elements(dt)))
    return make()


def _elements(dt):
    if dt.kind == "f":
        return st.floats(width=8 * dt.itemsize, allow_nan=True, allow_infinity=True)
    if dt.kind == "c":
        return st.complex_numbers(width=8 * dt.itemsize, allow_nan=True)
    return None


json_objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)

attr_values = st.one_of(
    json_objects.map(json.dumps),  # valid JSON, maybe not an object
    st.dictionaries(st.text(max_size=5), json_objects, max_size=3).map(json.dumps),
    st.sampled_from(['{"name": "linear"}', '{"name": "ve", "sigma_min": -1}',
                     '{"name": "vp-linear", "beta_min": "x"}', '{"name": "nope"}', "{", ""]),
    TEXT, st.binary(max_size=8).map(np.bytes_), st.integers(-2**63, 2**63 - 1), st.floats(),
    st.booleans(), hnp.arrays(np.int64, st.integers(0, 3)),
    hnp.arrays(np.float64, st.integers(0, 3)), st.just(h5py.Empty("f4")))


@st.composite
def run_specs(draw):
    """A run: each member valid, altered, missing or replaced by something else."""
    s = draw(st.integers(1, 4) | st.just(0))
    n = draw(st.integers(1, 3) | st.just(0))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    t_ok = np.linspace(1, 0, s + 1)[:-1]
    good = {
        "t": ("<f8", t_ok),
        "states": ("<f4", np.zeros((s, n, *shape), np.float32)),
        "x0_pred": ("<f4", np.ones((s, n, *shape), np.float32)),
        "labels": ("<i8", np.zeros(n, np.int64)),
        "samples": ("<f4", np.zeros((n, *shape), np.float32)),
    }
    members = {}
    for key, (dt, arr) in good.items():
        how = draw(mostly("good", st.sampled_from(["values", "random", "missing", "group",
                                                   "softlink", "longer"])))
        if how == "good":
            members[key] = ("data", dt, arr)
        elif how == "values":  # right shape, random values and dtype
            members[key] = ("data", *draw(arrays(arr.shape)))
        elif how == "random":
            members[key] = ("data", *draw(arrays()))
        elif how == "longer" and arr.ndim:
            members[key] = ("data", dt, np.concatenate([arr, arr[:1]]) if len(arr) else arr)
        elif how in ("group", "softlink"):
            members[key] = (how, None, None)
    attrs = {}
    for key in ("schedule", "sampler", "guidance", "model", "seed", "created", "complete"):
        how = draw(mostly("good", st.sampled_from(["random", "missing"])))
        if how == "good":
            attrs[key] = {"schedule": '{"name": "linear"}', "seed": 3,
                          "created": "2025-01-01T00:00:00", "complete": draw(st.booleans())
                          }.get(key, "{}")
        elif how == "random":
            attrs[key] = draw(attr_values)
    return {"members": members, "attrs": attrs}


@st.composite
def trajectory_files(draw):
    return {
        "format": draw(mostly(FORMAT, st.sampled_from([ESTIMATES_FORMAT, None]) | attr_values,
                              9)),
        "version": draw(mostly(1, st.sampled_from([None, 0, 2]) | attr_values, 9)),
        "runs": draw(mostly("group", st.sampled_from(["missing", "dataset"]), 9)),
        "run_specs": draw(st.dictionaries(st.sampled_from(["a", "b", "nag 1.5", "é"]),
                                          run_specs(), min_size=1, max_size=3)),
    }


def _put(f, path, spec):
    how, dt, arr = spec
    if how == "group":
        f.create_group(path)
    elif how == "softlink":
        f[path] = h5py.SoftLink("/nowhere")
    elif dt == "vlen-str":
        f.create_dataset(path, data=arr, dtype=h5py.string_dtype())
    elif dt == "compound":
        f.create_dataset(path, data=arr)
    else:
        chunks = (1, *arr.shape[1:]) if arr.ndim >= 2 and arr.size else None
        f.create_dataset(path, data=arr, dtype=np.dtype(dt), chunks=chunks,
                         maxshape=(None, *arr.shape[1:]) if chunks else None)


def write_spec(path: Path, spec: dict) -> None:
    with h5py.File(path, "w") as f:
        for key in ("format", "version"):
            if spec[key] is not None:
                f.attrs[key] = spec[key]
        if spec["runs"] == "dataset":
            f["runs"] = np.zeros(3)
            return
        if spec["runs"] == "missing":
            return
        f.create_group("runs")
        for name, run in spec["run_specs"].items():
            g = f.create_group(f"runs/{name}")
            for key, value in run["attrs"].items():
                g.attrs[key] = value
            for key, member in run["members"].items():
                _put(f, f"runs/{name}/{key}", member)


# -- what every file goes through ---------------------------------------------------------------

def exercise(path: Path) -> None:
    """Every reading entry point; TrajectoryError is the only acceptable failure."""
    for scan in (False, True):
        try:
            validate(path, scan=scan)
        except TrajectoryError:
            pass
    try:
        tf = open_trajectories(path)
    except TrajectoryError:
        return
    with tf:
        for name in tf.runs + ["missing-run"]:
            try:
                r = tf.run(name)
                r.summary()
                r.fingerprint()
                r.states[:]
                for what in ("states", "x0_pred"):
                    for _ in r.iter_chunks(max_bytes=16, what=what):
                        pass
                r.check_finite()
            except TrajectoryError:
                pass


def exercise_estimates(path: Path, source: Path) -> None:
    try:
        validate(path)
    except TrajectoryError:
        pass
    try:
        ef = open_estimates(path)
    except TrajectoryError:
        return
    with ef:
        for run in ef.runs + ["missing"]:
            try:
                for name in ef.estimators(run) + ["missing"]:
                    try:
                        e = ef.get(run, name)
                        _ = e.t_hat, e.t_std, e.reference, e.delta
                    except TrajectoryError:
                        pass
                ef.fingerprint(run)
            except TrajectoryError:
                pass
        try:
            ef.check_matches(source)
        except TrajectoryError:
            pass


@st.composite
def estimates_files(draw):
    s, n = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    parts = {"t": ("<f8", np.linspace(1, 0, s + 1)[:-1]),
             "t_hat": ("<f4", np.zeros((s, n), np.float32)),
             "t_std": ("<f4", np.zeros((s, n), np.float32)),
             "reference": ("<f8", np.zeros(s))}
    members = {}
    for key, (dt, arr) in parts.items():
        how = draw(mostly("good", st.sampled_from(["random", "missing", "group"])))
        members[key] = {"good": ("data", dt, arr), "random": ("data", *draw(arrays())),
                        "group": ("group", None, None)}.get(how)
    return {"format": draw(mostly(ESTIMATES_FORMAT, st.just(FORMAT) | attr_values, 9)),
            "fingerprint": draw(mostly("abc", st.none() | attr_values)),
            "estimator": draw(mostly('{"name": "oracle"}', attr_values)),
            "members": members}


def write_estimates_spec(path: Path, spec: dict) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["format"] = spec["format"]
        f.attrs["version"] = 1
        g = f.create_group("runs/baseline")
        if spec["fingerprint"] is not None:
            g.attrs["fingerprint"] = spec["fingerprint"]
        e = g.create_group("oracle")
        e.attrs["estimator"] = spec["estimator"]
        for key, member in spec["members"].items():
            if member is not None:
                _put(f, f"runs/baseline/{'t' if key == 't' else 'oracle/' + key}", member)


# -- the tests ------------------------------------------------------------------------------------

def check_trajectories(spec):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.h5"
        write_spec(path, spec)
        exercise(path)


def check_estimates(spec):
    with tempfile.TemporaryDirectory() as d:
        path, source = Path(d) / "e.h5", write_good(Path(d) / "good.h5")
        write_estimates_spec(path, spec)
        exercise_estimates(path, source)


def check_truncated(cut):
    with tempfile.TemporaryDirectory() as d:
        good = write_good(Path(d) / "good.h5")
        data = good.read_bytes()
        path = Path(d) / "cut.h5"
        path.write_bytes(data[: int(cut * len(data))])
        exercise(path)


_OURS: dict[str, bytes] = {}


def our_file() -> bytes:
    """A file from noiseshift's own writer: a complete run and a killed one."""
    if "bytes" not in _OURS:
        from noiseshift.io import TrajectoryWriter

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "ours.h5"
            for run, steps in (("baseline", 5), ("nag", 3)):
                with TrajectoryWriter(path, run, n=4, shape=(8,), schedule="linear",
                                      sampler={"name": "euler", "steps": 5}, seed=0) as w:
                    for i in range(steps):
                        w.callback({"i": i, "t": 1 - i / 5, "x": np.full((4, 8), i, "f4"),
                                    "x0_pred": np.ones((4, 8))})
                    if steps == 5:
                        w.finish(np.zeros((4, 8)))
            _OURS["bytes"] = path.read_bytes()
    return _OURS["bytes"]


flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                 min_size=1, max_size=8)


def check_flipped(changes):
    """Random bytes overwritten anywhere in a file noiseshift wrote (bit rot, a bad copy).
    Its string attributes are fixed-length, which keeps HDF5 itself from hanging or crashing
    on a damaged global heap (see noiseshift.io.h5.set_str)."""
    data = bytearray(our_file())
    for where, value in changes:
        data[int(where * len(data))] = value
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "flipped.h5"
        path.write_bytes(bytes(data))
        exercise(path)


@FAST
@given(flips)
def test_flipped_bytes(changes):
    check_flipped(changes)


@pytest.mark.fuzz
@LONG
@given(flips)
def test_flipped_bytes_long(changes):
    check_flipped(changes)


@FAST
@given(trajectory_files())
def test_trajectory_reader_raises_only_trajectory_error(spec):
    check_trajectories(spec)


@FAST
@given(estimates_files())
def test_estimates_reader_raises_only_trajectory_error(spec):
    check_estimates(spec)


@FAST
@given(st.floats(0, 1, exclude_max=True))
def test_truncated_anywhere(cut):
    check_truncated(cut)


@pytest.mark.fuzz
@LONG
@given(trajectory_files())
def test_trajectory_reader_long(spec):
    check_trajectories(spec)


@pytest.mark.fuzz
@LONG
@given(estimates_files())
def test_estimates_reader_long(spec):
    check_estimates(spec)


@pytest.mark.fuzz
@settings(FAST, max_examples=300)
@given(st.floats(0, 1, exclude_max=True))
def test_truncated_anywhere_long(cut):
    check_truncated(cut)



# -- the option parsers: any string is a spec or one NoiseshiftError (issue 21) -------------

PARSERS = settings(FAST, max_examples=int(os.environ.get("PARSER_EXAMPLES", 60)))
SPEC_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds("{}{}{}".format, st.sampled_from(["", "latents:", "photos:", "gmm:", "./",
                                                 "/", "digits", "x.npz", "x.h5:"]),
              st.text(max_size=12), st.sampled_from(["", ".npy", ".h5:x", ":k", "/"])))


@PARSERS
@given(SPEC_TEXT, st.one_of(st.none(), st.integers(-5, 2000)))
def test_data_spec_parser_gives_a_spec_or_one_error(text, size):
    from noiseshift.data import parse_data_spec
    from noiseshift.errors import NoiseshiftError

    try:
        spec = parse_data_spec(text, size=size)
    except NoiseshiftError as e:
        assert "\n" not in str(e).strip()
        return
    assert isinstance(spec, dict) and spec["name"]
    json.dumps(spec)


DDIM_KEYS = ["num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
             "trained_betas", "clip_sample", "set_alpha_to_one", "steps_offset",
             "prediction_type", "thresholding", "timestep_spacing", "rescale_betas_zero_snr"]
JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 1200),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                       st.lists(st.floats(-1, 2), max_size=3))
CONFIG_TEXT = st.one_of(
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(DDIM_KEYS), JSON_VALUE, max_size=4).map(json.dumps),
    st.lists(st.integers(), max_size=2).map(json.dumps))


@PARSERS
@given(CONFIG_TEXT, st.sampled_from(["DDIMScheduler", "EulerDiscreteScheduler",
                                     "FlowMatchEulerDiscreteScheduler"]),
       st.integers(-2, 1100))
def test_scheduler_config_parser_gives_a_scheduler_or_one_error(text, name, steps):
    pytest.importorskip("diffusers")
    from noiseshift.errors import NoiseshiftError
    from noiseshift.integrations.audit_diffusers import build_scheduler, check_scheduler

    try:
        check_scheduler(build_scheduler(name, None, text), steps)
    except NoiseshiftError as e:
        assert "\n" not in str(e).strip()
