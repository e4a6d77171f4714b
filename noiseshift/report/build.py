"""Build a `Report` from a trajectory file and its estimates: read the runs, choose the
meters and the baseline, and compute every table and the findings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..analysis.statistics import N_BOOT
from ..data import load_data
from ..errors import NoiseshiftError
from ..io import estimates_path
from .findings import findings
from .quality import quality_tables
from .runs import INDEPENDENT, Report, RunData, load_runs
from .sanity import sample_problems, warning
from .stats import paired_table, steps_table, summary_frames, theory_table


def build_report(path="trajectories.h5", estimates=None, *, baseline: str | None = None,
                 estimator: str | None = None, quality: bool = True, n_boot: int = N_BOOT,
                 seed: int = 0, data=None, features: str | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Read a trajectory file and its estimates and build every table.

    estimates: default <stem>.estimates.h5 beside the file. estimator: the main meter
    (default learned, else the first). baseline: the run paired differences are taken
    against (default: the unguided run). data: a Dataset for the quality metrics (default:
    the data named in the runs' model attribute). features: the quality metrics' feature
    space (`analysis.features`; default the data's own). progress(stage, done, total).
    """
    clock = time.perf_counter()
    if features is not None and not quality:
        raise NoiseshiftError(f"--features {features} sets the space of the quality metrics, "
                              f"which --no-quality turns off; drop one of the two")
    path, est_path = _paths(path, estimates)
    runs, notes = load_runs(path, est_path, progress)
    timings = {"read": time.perf_counter() - clock}
    main, independent, names = choose_estimators(runs, estimator)
    base = choose_baseline(runs, baseline, path)
    runs.sort(key=lambda r: r is not base)  # baseline first, then the file's order
    if base is None:
        notes.append("no unguided run in the file: no paired differences (pick one with "
                     "--baseline NAME)")
    data, data_spec, m2 = _data_for(runs, data, notes)
    steps = steps_table(runs, names, base, m2)
    t1 = time.perf_counter()
    qual, qdiff, problems, space = ({}, {}, {}, None) if not quality else quality_tables(
        runs, base, data, n_boot, seed, notes, progress, features)
    timings["quality"] = time.perf_counter() - t1
    summary, bands = summary_frames(runs, main, independent, qual, n_boot, seed)
    paired = paired_table(runs, base, main, independent, qdiff, n_boot, seed)
    theo = theory_table(runs, steps, main, m2)
    rep = Report(path, est_path, main, independent, names, None if base is None else base.name,
                 runs, steps, summary, paired, bands, theo, [], notes, data_spec, m2, timings)
    rep.warnings = _warnings(runs, data, problems)
    rep.feature_space = space
    rep.findings = findings(rep)
    timings["total"] = time.perf_counter() - clock
    return rep


def _warnings(runs: list[RunData], data, quality_problems: dict) -> list[dict]:
    """One warning per run whose samples fail the sanity checks (see sanity.py)."""
    out = []
    for r in runs:
        found = []
        if data is not None and r.samples is not None and tuple(r.shape) == data.shape:
            found += sample_problems(r.samples, data.x.numpy())
        found += quality_problems.get(r.name, [])
        if found:
            out.append(warning(r.name, found))
    return out


def _paths(path, estimates) -> tuple[Path, Path]:
    path = Path(path)
    if not path.exists():
        raise NoiseshiftError("no such trajectory file (record one with `noiseshift sample`)",
                              path)
    est_path = estimates_path(path) if estimates is None else Path(estimates)
    if not est_path.exists():
        raise NoiseshiftError(f"no estimates file; run `noiseshift estimate {path}` first",
                              est_path)
    return path, est_path


def choose_estimators(runs: list[RunData], estimator: str | None):
    """(main meter, independent meter or None, every estimator in the estimates)."""
    names = sorted({e for r in runs for e in r.readings})
    if not names:
        raise NoiseshiftError("the estimates file holds no readings")
    if estimator is not None:
        if estimator not in names:
            raise NoiseshiftError(f"no estimator {estimator!r} in the estimates; it has "
                                  f"{', '.join(names)}")
        main = estimator
    else:
        order = ["learned"] + [n for n in names if n not in INDEPENDENT] + list(INDEPENDENT)
        main = next(n for n in order if n in names)
    independent = next((n for n in INDEPENDENT if n in names and n != main), None)
    return main, independent, names


def choose_baseline(runs: list[RunData], baseline: str | None, path=None) -> RunData | None:
    """The named run, else the run called "unguided", else the first unguided run."""
    by_name = {r.name: r for r in runs}
    if baseline is not None:
        if baseline not in by_name:
            raise NoiseshiftError(f"no run {baseline!r} to use as baseline; the file has "
                                  f"{', '.join(map(repr, by_name))}", path)
        return by_name[baseline]
    unguided = [r for r in runs if r.label == "none"]
    if not unguided:
        return None
    return by_name.get("unguided") or unguided[0]


def _data_spec(runs: list[RunData]):
    """The data the runs' model learned, from the model attribute or an estimator's."""
    for r in runs:
        spec = (r.attrs.get("model") or {}).get("data") or next(
            (rd.identity.get("data") for rd in r.readings.values()
             if isinstance(rd.identity.get("data"), dict)), None)
        if spec is not None:
            return spec
    return None


def _data_for(runs, data, notes):
    """The Dataset the runs' model learned (for quality metrics and route (b)'s m2)."""
    spec = data.spec if data is not None else _data_spec(runs)
    if data is None and spec is not None:
        try:
            data = load_data(spec)
        except NoiseshiftError as e:
            notes.append(f"cannot load the runs' data ({e}); no quality metrics")
    elif data is None:
        notes.append("the runs do not say which data their model learned: no quality "
                     "metrics, and route (b) uses the baseline's samples for E|x0|^2")
    if data is not None:
        m2 = data.second_moment()
    else:
        with_samples = [r for r in runs if r.samples is not None]
        m2 = float(np.mean(np.square(with_samples[0].samples, dtype=np.float64))) \
            if with_samples else None
    return data, spec, m2
