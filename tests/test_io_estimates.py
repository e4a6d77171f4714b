"""Estimates files (noiseshift.io.estimates): writer, reader, matching their trajectory file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_io_trajectories import N, S, digest, record

from noiseshift.errors import NoiseshiftError, TrajectoryError
from noiseshift.io import (
    EstimatesWriter,
    estimates_path,
    open_estimates,
    open_trajectories,
    validate,
    write_estimates,
)


def _entries(path, run="baseline"):
    with open_trajectories(path) as tf:
        r = tf.run(run)
        s, n = r.num_steps, r.n
    g = np.random.default_rng(1)
    return [{"run": run, "estimator": "oracle", "identity": {"name": "oracle"},
             "calibration": {"blind_zones": []}, "reference": np.linspace(0.9, 0.1, s),
             "t_hat": g.random((s, n)), "t_std": g.random((s, n)) * 0.1}]


def test_estimates_round_trip_and_fingerprint(tmp_path):
    p = tmp_path / "traj.h5"
    record(p)
    out = estimates_path(p)
    assert out.name == "traj.estimates.h5"
    [en] = _entries(p)
    before = digest(p)
    write_estimates(out, p, [en])
    assert digest(p) == before  # the trajectory file is only read
    with open_estimates(out) as ef:
        assert ef.runs == ["baseline"] and ef.estimators("baseline") == ["oracle"]
        e = ef.get("baseline", "oracle")
        assert np.allclose(e.t_hat, en["t_hat"]) and e.t_hat.dtype == np.float32
        assert np.allclose(e.delta, en["t_hat"] - en["reference"][:, None], atol=1e-6)
        assert e.estimator == {"name": "oracle"} and e.calibration == {"blind_zones": []}
        ef.check_matches(p)
        copy = tmp_path / "copy.h5"
        shutil.copy(p, copy)
        ef.check_matches(copy)  # a copy is the same trajectories
        record(copy, "nag")
        ef.check_matches(copy)  # adding runs keeps estimates valid
        record(copy, "baseline", seed=5, overwrite=True)
        with pytest.raises(TrajectoryError, match="different trajectory file"):
            ef.check_matches(copy)
        other = tmp_path / "other.h5"
        record(other, "nag")
        with pytest.raises(TrajectoryError, match="different trajectory file.*no run"):
            ef.check_matches(other)
    s = validate(out)
    assert s["kind"] == "estimates" and s["runs"][0]["estimator"] == "oracle"


def test_estimates_writer_is_all_or_nothing(tmp_path):
    p = tmp_path / "traj.h5"
    record(p)
    out = tmp_path / "est.h5"
    [en] = _entries(p)
    with pytest.raises(RuntimeError, match="boom"):
        with EstimatesWriter(out, p) as ew:
            ew.add_estimator("baseline", "oracle", estimator={}, calibration={},
                             reference=en["reference"])
            ew.add("baseline", "oracle", 0, slice(0, 3), en["t_hat"][0, :3], en["t_std"][0, :3])
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
    with pytest.raises(RuntimeError, match="not written for every state"):
        with EstimatesWriter(out, p) as ew:
            ew.add_estimator("baseline", "oracle", estimator={}, calibration={},
                             reference=en["reference"])
            ew.add("baseline", "oracle", 0, slice(None), en["t_hat"][0], en["t_std"][0])
    assert not out.exists()
    with EstimatesWriter(out, p) as ew:  # streamed in (step, sample slice) pieces
        ew.add_estimator("baseline", "oracle", estimator={}, calibration={},
                         reference=en["reference"])
        for i in range(S):
            for lo in range(0, N, 4):
                sl = slice(lo, min(N, lo + 4))
                ew.add("baseline", "oracle", i, sl, en["t_hat"][i, sl], en["t_std"][i, sl])
    with open_estimates(out) as ef:
        assert np.allclose(ef.get("baseline", "oracle").t_hat, en["t_hat"])


def test_estimates_and_trajectory_files_are_told_apart(tmp_path):
    p = tmp_path / "traj.h5"
    record(p)
    out = estimates_path(p)
    write_estimates(out, p, _entries(p))
    with pytest.raises(TrajectoryError, match="estimates file, not a trajectory file"):
        open_trajectories(out)
    with pytest.raises(TrajectoryError, match="trajectory file, not an estimates file"):
        open_estimates(p)
    with open_estimates(out) as ef, pytest.raises(TrajectoryError, match="no estimator 'x'"):
        ef.get("baseline", "x")
    with pytest.raises(NoiseshiftError, match="own trajectory file"):
        EstimatesWriter(p, p)
