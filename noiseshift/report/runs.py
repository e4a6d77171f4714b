"""What the report is made of: each run's readings and states as read from the files, and
the `Report` that holds every table built from them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import open_estimates, open_trajectories
from ..schedules import get_schedule

if TYPE_CHECKING:
    import pandas as pd

LATE = 0.3  # "late" steps: t <= LATE
#: Bands of t of the report's bands table (bands.csv).
REPORT_BANDS = ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0))
INDEPENDENT = ("subspace", "oracle")


@dataclass(eq=False)
class Reading:
    """One estimator's readings of one run."""

    t_hat: np.ndarray  # (S, N)
    reference: np.ndarray  # (S,)
    blind_zones: list
    identity: dict

    @property
    def delta(self) -> np.ndarray:
        return self.t_hat.astype(np.float64) - self.reference[:, None]


@dataclass(eq=False)
class RunData:
    name: str
    t: np.ndarray
    n: int
    shape: tuple
    attrs: dict
    complete: bool
    labels: np.ndarray | None
    samples: np.ndarray | None
    moment: np.ndarray  # (S,) mean |x|^2 / d of the states at each step
    readings: dict[str, Reading] = field(default_factory=dict)

    @property
    def guidance(self) -> dict:
        return self.attrs.get("guidance") or {}

    @property
    def label(self) -> str:
        return str(self.guidance.get("kind", "none"))

    @property
    def schedule(self):
        return get_schedule(self.attrs["schedule"])


def is_paired(a: RunData, b: RunData) -> bool:
    """Same seed and the same n (and labels): sample i of one pairs with sample i of other."""
    same_labels = (a.labels is None) == (b.labels is None) and (
        a.labels is None or np.array_equal(a.labels, b.labels))
    return a.attrs.get("seed") == b.attrs.get("seed") and a.n == b.n and same_labels


def load_runs(path: Path, est_path: Path, progress) -> tuple[list[RunData], list[str]]:
    """Every run of the trajectory file with its readings; the states are streamed once,
    step by step, for their second moment. Returns (runs, notes for the reader)."""
    notes = []
    with open_trajectories(path) as tf, open_estimates(est_path) as ef:
        ef.check_matches(path)
        counter = _StepCounter(sum(tf.run(r).num_steps for r in tf.runs), progress)
        runs = []
        for name in tf.runs:
            run = tf.run(name)
            if name in ef.runs:
                readings = _readings(ef, name)
            else:
                readings = {}
                notes.append(f"run {name!r} has no estimates (run `noiseshift estimate` on "
                             f"the file again); only its samples are reported")
            sq = _square_sums(run, counter)
            samples = run.read_samples()  # None when incomplete; NaN/Inf -> TrajectoryError
            if not run.complete:
                notes.append(f"run {name!r} is incomplete (recording was interrupted): "
                             f"{run.num_steps} steps, no samples")
            runs.append(RunData(name, np.asarray(run.t), run.n, tuple(run.shape),
                                dict(run.attrs), run.complete, run.labels, samples,
                                sq / (run.n * math.prod(run.shape)), readings))
    return runs, notes


def _readings(ef, name: str) -> dict[str, Reading]:
    readings = {}
    for e in ef.estimators(name):
        got = ef.get(name, e)
        readings[e] = Reading(got.t_hat, got.reference,
                              (got.calibration or {}).get("blind_zones", []), got.estimator)
    return readings


class _StepCounter:
    """Reports "reading states" progress once per step over all runs."""

    def __init__(self, total: int, progress):
        self.total, self.done, self.progress = total, 0, progress

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress("reading states", self.done, self.total)


def _square_sums(run, counter: _StepCounter) -> np.ndarray:
    """Sum of |x|^2 over the samples at each step."""
    sq = np.zeros(run.num_steps)
    last = -1
    for i, _, block in run.iter_chunks():
        sq[i] += float(np.square(block, dtype=np.float64).sum())
        if i != last:
            counter.step()
            last = i
    return sq


@dataclass
class Report:
    """Everything the report says: tables (pandas), findings (sentences), and what the
    figures need. `to_dict()` is the `--json` output."""

    path: Path
    estimates: Path
    main: str
    independent: str | None
    estimators: list[str]
    baseline: str | None
    runs: list[RunData]
    steps: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    bands: pd.DataFrame
    theory: pd.DataFrame
    findings: list[str]
    notes: list[str]
    data_spec: dict | None
    m2: float | None
    timings: dict = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)  # {"run", "problem"}: see sanity.py
    feature_space: str | None = None  # what the quality metrics' features are

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records"))

        return {
            "file": str(self.path), "estimates": str(self.estimates),
            "estimator": self.main, "independent": self.independent,
            "estimators": self.estimators, "baseline": self.baseline,
            "data": self.data_spec, "summary": records(self.summary),
            "paired": records(self.paired), "bands": records(self.bands),
            "theory": records(self.theory), "steps": records(self.steps),
            "warnings": self.warnings, "findings": self.findings, "notes": self.notes,
            "feature_space": self.feature_space,
            "figures": {k: str(v) for k, v in self.figures.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def main_zones(self) -> list:
        """The main estimator's blind zones (those of the first run it read)."""
        for rd in self.runs:
            if self.main in rd.readings:
                return rd.readings[self.main].blind_zones
        return []
