"""Turn recorded runs and their estimates into tables, figures and a short findings section.

    rep = build_report("trajectories.h5")            # reads <stem>.estimates.h5 beside it
    write_report(rep, "report/", plot=True)           # summary.csv, steps.csv, report.md, PNGs

Every state is read once, streamed step by step (for the reference-free second-moment
prediction, route (b) of `theory`); the estimates and the final samples are small. Numbers in
report.md are generated from the tables: no claim is written in advance.

Shift: delta = t' - reference(t), the main estimator's calibrated reading minus its reading
of true x_t (see `estimators`). Steps inside the estimator's blind zones are shown but left
out of every average, since a shift cannot be read there. An independent meter (the subspace
or exact oracle) in the same estimates file is shown beside the main one: a correction guided
by the learned estimator must not be judged by that estimator alone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import theory
from .analysis.classifier import classifier_accuracy, digits_classifier
from .analysis.quality import (
    FeatureSpace,
    energy_distance,
    fd,
    fd_difference,
    feature_space,
    mixture_log_likelihood,
    mode_coverage,
    precision_recall,
    precision_recall_difference,
)
from .analysis.statistics import N_BOOT, Estimate, bootstrap
from .errors import NoiseshiftError
from .estimation import summarize
from .estimators.base import in_zones
from .io import estimates_path, open_estimates, open_trajectories
from .schedules import get_schedule

LATE = 0.3  # "late" steps: t <= LATE
BANDS = ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0))
INDEPENDENT = ("subspace", "oracle")
MAX_GRID = 64  # samples shown per grid

__all__ = ["Report", "RunData", "build_report", "write_report", "make_figures"]


# -- what is read from the files -----------------------------------------------------------------

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


def _load(path: Path, est_path: Path, progress) -> tuple[list[RunData], list[str]]:
    notes = []
    with open_trajectories(path) as tf, open_estimates(est_path) as ef:
        ef.check_matches(path)
        total = sum(tf.run(r).num_steps for r in tf.runs)
        done = 0
        runs = []
        for name in tf.runs:
            run = tf.run(name)
            readings = {}
            if name in ef.runs:
                for e in ef.estimators(name):
                    got = ef.get(name, e)
                    readings[e] = Reading(got.t_hat, got.reference,
                                          (got.calibration or {}).get("blind_zones", []),
                                          got.estimator)
            else:
                notes.append(f"run {name!r} has no estimates (run `noiseshift estimate` on "
                             f"the file again); only its samples are reported")
            sq = np.zeros(run.num_steps)
            last = -1
            for i, _, block in run.iter_chunks():
                sq[i] += float(np.square(block, dtype=np.float64).sum())
                if progress is not None and i != last:
                    done += 1
                    last = i
                    progress("reading states", done, total)
            samples = run.read_samples()  # None when incomplete; NaN/Inf -> TrajectoryError
            if not run.complete:
                notes.append(f"run {name!r} is incomplete (recording was interrupted): "
                             f"{run.num_steps} steps, no samples")
            runs.append(RunData(name, np.asarray(run.t), run.n, tuple(run.shape),
                                dict(run.attrs), run.complete, run.labels, samples,
                                sq / (run.n * math.prod(run.shape)), readings))
    return runs, notes


# -- choosing meters and the baseline ------------------------------------------------------------

def _choose_estimators(runs: list[RunData], estimator: str | None):
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


def _paired(a: RunData, b: RunData) -> bool:
    """Same seed and the same n (and labels): sample i of one pairs with sample i of other."""
    same_labels = (a.labels is None) == (b.labels is None) and (
        a.labels is None or np.array_equal(a.labels, b.labels))
    return a.attrs.get("seed") == b.attrs.get("seed") and a.n == b.n and same_labels


def _choose_baseline(runs: list[RunData], baseline: str | None, path=None) -> RunData | None:
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


def _scale_of(g: dict) -> tuple[str, float] | None:
    """(family, scale) for guidance with exactly one scaled term, the family being the
    guidance with its scale removed; None otherwise."""
    scaled = [k for k, v in g.items() if isinstance(v, dict) and "scale" in v]
    if len(scaled) != 1:
        return None
    k = scaled[0]
    rest = {kk: vv for kk, vv in g.items() if kk != "kind"}
    rest[k] = {kk: vv for kk, vv in g[k].items() if kk != "scale"}
    return json.dumps(rest, sort_keys=True, default=str), float(g[k]["scale"])


def _family_name(g: dict) -> str:
    k = next(k for k, v in g.items() if isinstance(v, dict) and "scale" in v)
    mode = g[k].get("mode")
    return f"{k}-{mode}" if mode else k


# -- shift statistics ----------------------------------------------------------------------------

def _step_mask(t: np.ndarray, zones, lo=0.0, hi=1.0) -> np.ndarray:
    return (~in_zones(t, zones)) & (t >= lo) & (t <= hi)


def _abs_mean(d: np.ndarray, mask: np.ndarray):
    return lambda i: float(np.abs(d[mask][:, i].mean(1)).mean()) if mask.any() else math.nan


def _signed_mean(d: np.ndarray, mask: np.ndarray):
    return lambda i: float(d[mask][:, i].mean()) if mask.any() else math.nan


def _shift_stats(rd: RunData, reading: Reading, n_boot: int, seed: int) -> dict:
    """Mean delta and mean |step-mean delta| over readable steps, overall and late, and per
    band; CIs from resampling samples."""
    d, t = reading.delta, rd.t
    out = {}
    for key, lo, hi in (("", 0.0, 1.0), ("_late", 0.0, LATE)):
        mask = _step_mask(t, reading.blind_zones, lo, hi)
        out["mean_delta" + key] = bootstrap(_signed_mean(d, mask), rd.n, n_boot=n_boot,
                                            seed=seed)
        out["mean_abs_delta" + key] = bootstrap(_abs_mean(d, mask), rd.n, n_boot=n_boot,
                                                seed=seed)
    for lo, hi in BANDS:
        mask = _step_mask(t, reading.blind_zones, lo, hi) & (t > lo if lo > 0 else True)
        out[f"band_{lo:g}-{hi:g}"] = bootstrap(_signed_mean(d, mask), rd.n, n_boot=n_boot,
                                               seed=seed)
    return out


def _shift_difference(base: RunData, rd: RunData, name: str, n_boot: int, seed: int) -> dict:
    """Paired (run - baseline) differences of mean delta and mean |delta|, on the steps both
    can read (same seeds: resample sample indices jointly)."""
    ra, rb = base.readings[name], rd.readings[name]
    if len(base.t) != len(rd.t) or not np.allclose(base.t, rd.t):
        return {}
    mask = _step_mask(rd.t, ra.blind_zones) & _step_mask(rd.t, rb.blind_zones)
    da, db = ra.delta, rb.delta
    out = {}
    for key, fn in (("mean_delta", _signed_mean), ("mean_abs_delta", _abs_mean)):
        fa, fb = fn(da, mask), fn(db, mask)
        out[key] = _diff(lambda i, fa=fa, fb=fb: fb(i) - fa(i), base, rd, n_boot, seed,
                         fa, fb)
    return out


def _diff(stat, a: RunData, b: RunData, n_boot, seed, fa=None, fb=None) -> Estimate:
    if _paired(a, b):
        return bootstrap(stat, b.n, n_boot=n_boot, seed=seed)
    # Different seeds: independent resamples, CIs combined in quadrature.
    ea = bootstrap(fa, a.n, n_boot=n_boot, seed=seed)
    eb = bootstrap(fb, b.n, n_boot=n_boot, seed=seed + 1)
    return _unpaired(ea, eb)


def _unpaired(ea: Estimate, eb: Estimate) -> Estimate:
    half = math.hypot((ea.hi - ea.lo) / 2, (eb.hi - eb.lo) / 2)
    v = eb.value - ea.value
    return Estimate(v, v - half, v + half)


# -- the report ----------------------------------------------------------------------------------

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
            "findings": self.findings, "notes": self.notes,
            "figures": {k: str(v) for k, v in self.figures.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def build_report(path="trajectories.h5", estimates=None, *, baseline: str | None = None,
                 estimator: str | None = None, quality: bool = True, n_boot: int = N_BOOT,
                 seed: int = 0, data=None,
                 progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Read a trajectory file and its estimates and build every table.

    estimates: default <stem>.estimates.h5 beside the file. estimator: the main meter
    (default learned, else the first). baseline: the run paired differences are taken
    against (default: the unguided run). data: a Dataset for the quality metrics (default:
    the data named in the runs' model attribute). progress(stage, done, total).
    """
    clock = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise NoiseshiftError("no such trajectory file (record one with `noiseshift sample`)",
                              path)
    est_path = estimates_path(path) if estimates is None else Path(estimates)
    if not est_path.exists():
        raise NoiseshiftError(f"no estimates file; run `noiseshift estimate {path}` first",
                              est_path)
    runs, notes = _load(path, est_path, progress)
    timings = {"read": time.perf_counter() - clock}
    main, independent, names = _choose_estimators(runs, estimator)
    base = _choose_baseline(runs, baseline, path)
    runs.sort(key=lambda r: r is not base)  # baseline first, then the file's order
    if base is None:
        notes.append("no unguided run in the file: no paired differences (pick one with "
                     "--baseline NAME)")
    data, data_spec, m2 = _data_for(runs, data, notes)
    steps = _steps_table(runs, names, base, m2)
    t1 = time.perf_counter()
    qual, qdiff = ({}, {}) if not quality else _quality(runs, base, data, n_boot, seed,
                                                        notes, progress)
    timings["quality"] = time.perf_counter() - t1
    summary, bands = _summary(runs, main, independent, qual, n_boot, seed)
    paired = _paired_table(runs, base, main, independent, qdiff, n_boot, seed)
    theo = _theory_table(runs, steps, main, m2)
    rep = Report(path, est_path, main, independent, names, None if base is None else base.name,
                 runs, steps, summary, paired, bands, theo, [], notes, data_spec, m2, timings)
    rep.findings = findings(rep)
    timings["total"] = time.perf_counter() - clock
    return rep


def _data_for(runs, data, notes):
    """The Dataset the runs' model learned (for quality metrics and route (b)'s m2)."""
    from .data import load_data

    spec = None
    if data is not None:
        spec = data.spec
    else:
        for r in runs:
            spec = (r.attrs.get("model") or {}).get("data") or next(
                (rd.identity.get("data") for rd in r.readings.values()
                 if isinstance(rd.identity.get("data"), dict)), None)
            if spec is not None:
                break
        if spec is not None:
            try:
                data = load_data(spec)
            except NoiseshiftError as e:
                notes.append(f"cannot load the runs' data ({e}); no quality metrics")
                data = None
        else:
            notes.append("the runs do not say which data their model learned: no quality "
                         "metrics, and route (b) uses the baseline's samples for E|x0|^2")
    if data is not None:
        m2 = data.second_moment()
    else:
        with_samples = [r for r in runs if r.samples is not None]
        m2 = float(np.mean(np.square(with_samples[0].samples, dtype=np.float64))) \
            if with_samples else None
    return data, spec, m2


def _steps_table(runs, names, base, m2) -> pd.DataFrame:
    rows = []
    for rd in runs:
        pred_b = (theory.delta_second_moment(rd.t, rd.moment, m2, rd.schedule)
                  if m2 is not None else np.full(len(rd.t), np.nan))
        for name in names:
            reading = rd.readings.get(name)
            if reading is None:
                continue
            recs = summarize(rd.t, reading.reference, reading.t_hat, reading.blind_zones)
            diff = _per_step_diff(base, rd, name)
            for i, rec in enumerate(recs):
                rows.append({"run": rd.name, "estimator": name, **rec,
                             "moment": rd.moment[i], "pred_b": pred_b[i], **diff[i]})
    return pd.DataFrame(rows)


def _per_step_diff(base, rd, name) -> list[dict]:
    """Per-step paired difference of delta against the baseline (mean and 95% CI over
    samples), NaN when not paired or for the baseline itself."""
    empty = [{"d_delta": math.nan, "d_ci_low": math.nan, "d_ci_high": math.nan}] * len(rd.t)
    if base is None or base is rd or name not in base.readings or not _paired(base, rd) \
            or len(base.t) != len(rd.t):
        return empty
    dd = rd.readings[name].delta - base.readings[name].delta
    mean = dd.mean(1)
    half = 1.959963984540054 * dd.std(1, ddof=1) / math.sqrt(rd.n)
    return [{"d_delta": float(m), "d_ci_low": float(m - h), "d_ci_high": float(m + h)}
            for m, h in zip(mean, half, strict=True)]


def _quality(runs, base, data, n_boot, seed, notes, progress):
    """Per-run quality and paired differences against the baseline."""
    if data is None:
        return {}, {}
    usable = [r for r in runs if r.samples is not None and tuple(r.shape) == data.shape]
    for r in runs:
        if r.samples is not None and all(r is not u for u in usable):
            notes.append(f"run {r.name!r}: samples of shape {r.shape} do not match the data "
                         f"{data.shape}; no quality metrics")
    if not usable:
        return {}, {}
    space = feature_space(data, classifier=None) if data.name != "digits" else \
        FeatureSpace(data.x, "digits", classifier=digits_classifier(
            progress=None if progress is None else
            lambda d, t, m: progress("training the digits classifier (first use)", d, t)))
    feats, qual, qdiff = {}, {}, {}
    kw = {"n_boot": n_boot, "seed": seed}
    for k, r in enumerate(usable):
        feats[r.name] = f = space(r.samples)
        q = {"fd": fd(f, space.reference, **kw)}
        q["precision"], q["recall"] = precision_recall(f, space.reference,
                                                       real_radii=space.radii(), **kw)
        conditional = int((r.attrs.get("model") or {}).get("num_classes", 0) or 0) > 0
        if r.labels is not None and conditional and space.kind == "digits":
            q["accuracy"] = classifier_accuracy(r.samples, r.labels, space.net, **kw)
        if data.mixture is not None:
            q["log_likelihood"] = mixture_log_likelihood(r.samples, data.mixture, **kw)
            q["energy"] = energy_distance(r.samples, data.mixture, **kw)
            q["modes"] = mode_coverage(r.samples, data.mixture)["covered"]
        qual[r.name] = q
        if progress is not None:
            progress("sample quality", k + 1, len(usable))
    if base is not None and base.name in feats:
        fa = feats[base.name]
        for r in usable:
            if r is base:
                continue
            fb = feats[r.name]
            if _paired(base, r):
                d = {"fd": fd_difference(fa, fb, space.reference, **kw)}
                d["precision"], d["recall"] = precision_recall_difference(
                    fa, fb, space.reference, real_radii=space.radii(), **kw)
            else:
                d = {k: _unpaired(qual[base.name][k], qual[r.name][k])
                     for k in ("fd", "precision", "recall")}
            for key in ("accuracy", "log_likelihood"):
                if key in qual[r.name] and key in qual[base.name]:
                    d[key] = _unpaired(qual[base.name][key], qual[r.name][key]) \
                        if not _paired(base, r) else _paired_mean(
                            base, r, key, data, space, kw)
            qdiff[r.name] = d
    return qual, qdiff


def _paired_mean(base, r, key, data, space, kw) -> Estimate:
    if key == "accuracy":
        pa = _hits(base, space)
        pb = _hits(r, space)
    else:
        pa = data.mixture.log_prob_data(base.samples).numpy()
        pb = data.mixture.log_prob_data(r.samples).numpy()
    diff = pb - pa
    return bootstrap(lambda i: diff[i].mean(), len(diff), **kw)


def _hits(r, space) -> np.ndarray:
    import torch

    with torch.no_grad():
        pred = space.net(torch.as_tensor(r.samples)).argmax(1).numpy()
    return (pred == r.labels).astype(np.float64)


def _est_cols(prefix: str, e: Estimate | None) -> dict:
    if e is None:
        return {}
    return {prefix: e.value, f"{prefix}_lo": e.lo, f"{prefix}_hi": e.hi}


def _summary(runs, main, independent, qual, n_boot, seed):
    rows, bands = [], []
    for rd in runs:
        row = {"run": rd.name, "guidance": rd.label, "n": rd.n, "steps": len(rd.t),
               "complete": rd.complete}
        for name, tag in ((main, ""), (independent, "ind_")):
            if name is None or name not in rd.readings:
                continue
            st = _shift_stats(rd, rd.readings[name], n_boot, seed)
            for key in ("mean_delta", "mean_abs_delta", "mean_delta_late",
                        "mean_abs_delta_late"):
                row.update(_est_cols(tag + key, st[key]))
            for lo, hi in BANDS:
                e = st[f"band_{lo:g}-{hi:g}"]
                bands.append({"run": rd.name, "estimator": name, "band": f"{lo:g}-{hi:g}",
                              "delta": e.value, "lo": e.lo, "hi": e.hi})
        for key, e in qual.get(rd.name, {}).items():
            if isinstance(e, Estimate):
                row.update(_est_cols(key, e))
            else:
                row[key] = e
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(bands)


def _paired_table(runs, base, main, independent, qdiff, n_boot, seed) -> pd.DataFrame:
    if base is None:
        return pd.DataFrame()
    rows = []
    for rd in runs:
        if rd is base:
            continue
        row = {"run": rd.name, "baseline": base.name, "paired": _paired(base, rd)}
        for name, tag in ((main, ""), (independent, "ind_")):
            if name is None or name not in rd.readings or name not in base.readings:
                continue
            for key, e in _shift_difference(base, rd, name, n_boot, seed).items():
                row.update(_est_cols(f"d_{tag}{key}", e))
        for key, e in qdiff.get(rd.name, {}).items():
            row.update(_est_cols(f"d_{key}", e))
        rows.append(row)
    return pd.DataFrame(rows)


def _flat_points(m2, schedule) -> np.ndarray:
    """Interior t where the schedule's marginal second moment is flat (route (b) blind)."""
    return schedule.moment_branches(m2)[1:-1] if m2 is not None else np.zeros(0)


def _theory_table(runs, steps: pd.DataFrame, main: str, m2) -> pd.DataFrame:
    """Route (b), the reference-free second-moment match, against the measured shift on the
    readable steps; r2_away leaves out steps within 0.1 of a flat point of the moment."""
    rows = []
    for rd in runs:
        s = steps[(steps.run == rd.name) & (steps.estimator == main)]
        if s.empty or s.pred_b.isna().all():
            continue
        s = s[~s.blind]
        t, meas, pred = s.t.to_numpy(), s.delta.to_numpy(), s.pred_b.to_numpy()
        flat = _flat_points(m2, rd.schedule)
        away = np.ones(len(t), bool) if not len(flat) else \
            np.abs(t[:, None] - flat[None, :]).min(1) > 0.1
        resolved = (s.ci_low.to_numpy() > 0) | (s.ci_high.to_numpy() < 0)
        sign_ok = np.sign(meas[resolved]) == np.sign(pred[resolved])
        tol = np.maximum(s.ci_high.to_numpy() - s.ci_low.to_numpy(), 0.01)
        off = np.abs(pred - meas) > tol
        side = np.searchsorted(flat, t) if len(flat) else np.zeros(len(t), int)
        rows.append({"run": rd.name, "r2": theory.r2_score(meas, pred),
                     "r2_away": theory.r2_score(meas[away], pred[away]),
                     "sign_agreement": float(sign_ok.mean()) if resolved.any() else math.nan,
                     "mean_measured": float(meas.mean()) if len(t) else math.nan,
                     "mean_predicted": float(pred.mean()) if len(t) else math.nan,
                     "disagree": _ranges(t, off, meas, pred, side)})
    return pd.DataFrame(rows)


def _ranges(t, flag, meas, pred, side) -> list[dict]:
    """Runs of consecutive disagreeing steps (not crossing a flat point), as t ranges,
    largest disagreement first."""
    out, start = [], None
    for i in range(len(t) + 1):
        if i < len(t) and flag[i] and (start is None or side[i] == side[start]):
            start = i if start is None else start
            continue
        if start is not None:
            sl = slice(start, i)
            out.append({"t_hi": float(t[sl].max()), "t_lo": float(t[sl].min()),
                        "measured": float(meas[sl].mean()), "predicted": float(pred[sl].mean())})
        start = i if i < len(t) and flag[i] else None
    return sorted(out, key=lambda d: -abs(d["predicted"] - d["measured"]) * (d["t_hi"] - d[
        "t_lo"] + 0.05))


# -- findings in words ---------------------------------------------------------------------------

def _fmt(e_value, lo=None, hi=None, spec="+.3f") -> str:
    if lo is None or not np.isfinite(lo):
        return f"{e_value:{spec}}"
    return f"{e_value:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def _col(row, key, spec="+.3f") -> str:
    return _fmt(row[key], row.get(f"{key}_lo"), row.get(f"{key}_hi"), spec)


def _has(row, key) -> bool:
    return key in row and row[key] is not None and np.isfinite(row[key])


def findings(rep: Report) -> list[str]:
    """Sentences generated from the tables."""
    out = []
    s = rep.summary.set_index("run", drop=False)
    zones = _zones_of(rep)
    if zones:
        z = ", ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zones)
        out.append(f"The {rep.main} estimator cannot read t in {z} (blind zones): those steps "
                   f"are shown but left out of every average.")
    base = s.loc[rep.baseline] if rep.baseline in s.index else None
    if base is not None and _has(base, "mean_delta"):
        lo, hi = base.get("mean_delta_lo"), base.get("mean_delta_hi")
        drift = "drifts off its schedule" if (lo > 0 or hi < 0) else "stays on its schedule"
        late = (f"; late (t <= {LATE:g}) {_col(base, 'mean_delta_late')}"
                if _has(base, "mean_delta_late") else "")
        out.append(f"The baseline run {rep.baseline!r} {drift}: mean shift "
                   f"{_col(base, 'mean_delta')} over all readable steps{late} "
                   f"({rep.main} estimator, 95% CI).")
        st = rep.steps[(rep.steps.run == rep.baseline) & (rep.steps.estimator == rep.main)
                       & ~rep.steps.blind]
        if not st.empty:
            worst = st.loc[st.delta.abs().idxmax()]
            out.append(f"Its largest shift is {worst.delta:+.3f} at t = {worst.t:.3f}.")
    if rep.independent and base is not None and _has(base, "ind_mean_delta"):
        out.append(f"The independent {rep.independent} meter reads a mean shift of "
                   f"{_col(base, 'ind_mean_delta')} for the baseline.")
    for _, p in rep.paired.iterrows():
        out.append(_run_sentence(rep, p))
    out.extend(_quality_warnings(rep))
    out.extend(_theory_sentences(rep))
    return [f for f in out if f]


def _pct(change: float, ref: float) -> str:
    return f"{100 * change / ref:+.0f}%" if ref and np.isfinite(ref) and ref > 0 else "n/a"


def _run_sentence(rep, p) -> str:
    s = rep.summary.set_index("run")
    ref = s.loc[p.baseline, "mean_abs_delta"] if "mean_abs_delta" in s else math.nan
    parts = [f"{p.run!r} against {p.baseline!r}"
             + ("" if p.paired else " (different seeds: unpaired CIs)") + ":"]
    if _has(p, "d_mean_abs_delta"):
        sig = "resolved" if _excl(p, "d_mean_abs_delta") else "not resolved"
        parts.append(f"mean |shift| changes by {_col(p, 'd_mean_abs_delta')} "
                     f"({_pct(p.d_mean_abs_delta, ref)}, {sig}) as read by {rep.main}")
    if _has(p, "d_ind_mean_abs_delta"):
        iref = s.loc[p.baseline, "ind_mean_abs_delta"] if "ind_mean_abs_delta" in s else math.nan
        parts.append(f"and by {_col(p, 'd_ind_mean_abs_delta')} "
                     f"({_pct(p.d_ind_mean_abs_delta, iref)}) by the independent "
                     f"{rep.independent} meter")
    if _has(p, "d_fd"):
        verdict = ("better" if p.d_fd_hi < 0 else "worse" if p.d_fd_lo > 0 else
                   "no resolvable change")
        parts.append(f"; FD changes by {_col(p, 'd_fd', '+.2f')} ({verdict})")
    return " ".join(parts).replace(" ;", ";") + "."


def _excl(p, key) -> bool:
    return p[f"{key}_lo"] > 0 or p[f"{key}_hi"] < 0


def _quality_warnings(rep) -> list[str]:
    worse = [p.run for _, p in rep.paired.iterrows()
             if _has(p, "d_mean_abs_delta") and _has(p, "d_fd") and p.d_mean_abs_delta_hi < 0
             and p.d_fd_lo > 0]
    if not worse:
        return []
    return [f"Less shift is not better samples here: {_names(worse)} shrink"
            f"{'s' if len(worse) == 1 else ''} the shift but "
            f"{'its' if len(worse) == 1 else 'their'} FD is worse than that of {rep.baseline!r}."]


def _names(names) -> str:
    q = [repr(n) for n in names]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def _theory_sentences(rep) -> list[str]:
    out = []
    if rep.theory.empty:
        return out
    flat = _flat_points(rep.m2, rep.runs[0].schedule)
    if len(flat):
        out.append(f"Theory: under the {rep.runs[0].schedule.name} schedule the marginal second "
                   f"moment alpha^2 E|x0|^2 + sigma^2 (E|x0|^2 = {rep.m2:.2f} per dimension) is "
                   f"flat at t* = {', '.join(f'{f:.2f}' for f in flat)}: near it the "
                   f"second-moment prediction (route b) reads nothing, and on the far side it "
                   f"reads extra noise as a *cleaner* state (opposite sign).")
    th = rep.theory.set_index("run", drop=False)
    r2 = ", ".join(f"{r.r2:.2f} ({r.run})" for r in th.itertuples())
    best = th.r2.max()
    fit = ("explains" if best >= 0.5 else "partly explains" if best > 0 else
           "does not explain")
    out.append(f"Route (b), the reference-free second-moment match, {fit} the measured "
               f"per-step shift: R^2 = {r2}.")
    focus = th.loc[rep.baseline] if rep.baseline in th.index else th.iloc[0]
    msg = (f"For {focus.run!r}: mean predicted {focus.mean_predicted:+.3f}, measured "
           f"{focus.mean_measured:+.3f}")
    if len(flat):
        msg += f", R^2 {focus.r2_away:.2f} away from t*"
    if np.isfinite(focus.sign_agreement):
        msg += f"; signs agree on {100 * focus.sign_agreement:.0f}% of resolved steps"
    where = "; ".join(
        (f"t = {d['t_lo']:.2f}" if d["t_lo"] == d["t_hi"] else
         f"t in [{d['t_lo']:.2f}, {d['t_hi']:.2f}]")
        + f" (predicted {d['predicted']:+.3f}, measured {d['measured']:+.3f})"
        for d in focus.disagree[:3])
    out.append(msg + (f". They disagree most at {where}." if where else "."))
    return out


# -- writing -------------------------------------------------------------------------------------

def write_report(rep: Report, out="report", plot: bool = True, progress=None) -> Path:
    """Write summary.csv, steps.csv, paired.csv, bands.csv, report.md (and PNG figures with
    plot) into `out`; returns the report.md path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep.summary.to_csv(out / "summary.csv", index=False)
    rep.steps.to_csv(out / "steps.csv", index=False)
    rep.paired.to_csv(out / "paired.csv", index=False)
    rep.bands.to_csv(out / "bands.csv", index=False)
    if plot:
        start = time.perf_counter()
        rep.figures = make_figures(rep, out, progress)
        rep.timings["figures"] = time.perf_counter() - start
    md = out / "report.md"
    md.write_text(_markdown(rep))
    return md


def _md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)

    def cell(v):
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:{floatfmt}}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join(lines) + "\n"


def _ci_frame(df: pd.DataFrame, keys: list[tuple[str, str, str]], first: list[str]):
    """A display frame with 'value [lo, hi]' strings."""
    rows = []
    for _, r in df.iterrows():
        row = {c: r[c] for c in first if c in r}
        for key, title, spec in keys:
            if _has(r, key):
                row[title] = _col(r, key, spec)
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(rep: Report) -> str:
    lines = [f"# Noise-shift report: `{rep.path.name}`", ""]
    lines += [f"Runs: {', '.join(r.name for r in rep.runs)}. Shift meter: **{rep.main}**"
              + (f", independent meter: **{rep.independent}**" if rep.independent else "")
              + (f". Baseline: **{rep.baseline}**." if rep.baseline else "."),
              "Shift delta = t' - reference(t): positive means the state is noisier than its "
              "schedule says. 95% bootstrap CIs over samples in brackets.", ""]
    lines += ["## Findings", ""] + [f"- {f}" for f in rep.findings] + [""]
    if rep.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]
    lines += ["## Runs", ""]
    keys = [("mean_delta", "mean delta", "+.4f"), ("mean_abs_delta", "mean |delta|", ".4f"),
            ("mean_abs_delta_late", f"|delta| late (t<={LATE:g})", ".4f"),
            ("ind_mean_abs_delta", f"|delta| {rep.independent}", ".4f"),
            ("fd", "FD", ".2f"), ("precision", "precision", ".3f"),
            ("recall", "recall", ".3f"), ("accuracy", "accuracy", ".3f"),
            ("log_likelihood", "log-lik", ".2f"), ("energy", "energy dist", ".4f")]
    redundant = all(g in (r, "none") for r, g in zip(rep.summary.run, rep.summary.guidance,
                                                      strict=True))
    first = ["run", "n", "steps"] if redundant else ["run", "guidance", "n", "steps"]
    lines.append(_md_table(_ci_frame(rep.summary, keys, first)))
    if not rep.paired.empty:
        lines += [f"## Against the baseline ({rep.baseline}), paired by seed", ""]
        dkeys = [("d_mean_delta", "d mean delta", "+.4f"),
                 ("d_mean_abs_delta", "d mean |delta|", "+.4f"),
                 ("d_ind_mean_abs_delta", f"d |delta| {rep.independent}", "+.4f"),
                 ("d_fd", "d FD", "+.2f"), ("d_precision", "d precision", "+.3f"),
                 ("d_recall", "d recall", "+.3f"), ("d_accuracy", "d accuracy", "+.3f"),
                 ("d_log_likelihood", "d log-lik", "+.2f")]
        lines.append(_md_table(_ci_frame(rep.paired, dkeys, ["run", "paired"])))
    lines += ["## Shift per band of t", ""]
    if not rep.bands.empty:
        b = rep.bands.assign(delta=[_fmt(r.delta, r.lo, r.hi, "+.4f")
                                    for r in rep.bands.itertuples()])
        order = {r.name: k for k, r in enumerate(rep.runs)}
        wide = b.pivot_table(index=["run", "estimator"], columns="band", values="delta",
                             aggfunc="first").reset_index()
        wide = wide.sort_values("run", key=lambda c: c.map(order), kind="stable")
        lines.append(_md_table(wide))
    for name, title in (("t_prime", "t' against t"), ("delta", "Shift against t, with the "
                        "second-moment prediction (route b)"), ("density", "Density of t' "
                        "at chosen steps"), ("quality_vs_scale", "Quality against guidance "
                        "scale")):
        if name in rep.figures:
            lines += [f"## {title}", "", f"![{title}]({rep.figures[name].name})", ""]
    lines += ["## Theory next to measurement", ""]
    if not rep.theory.empty:
        th = rep.theory[["run", "r2", "r2_away", "sign_agreement", "mean_predicted",
                         "mean_measured"]]
        lines.append(_md_table(th))
        lines.append("Route (b) matches the states' second moment against the schedule's "
                     "alpha_t'^2 E|x0|^2 + sigma_t'^2 and needs no reference trajectory. It "
                     "reads the state's overall energy, while the estimator also reads its "
                     "structure, so the two can disagree (see findings).\n")
    grids = [k for k in rep.figures if k.startswith("samples_")]
    if grids:
        lines += ["## Samples", ""]
        lines += [f"**{k[len('samples_'):]}**\n\n![{k}]({rep.figures[k].name})\n" for k in grids]
    lines += ["## Per-step shift", ""]
    cols = ["run", "estimator", "step", "t", "t_hat", "delta", "ci_low", "ci_high", "blind",
            "pred_b", "d_delta"]
    lines.append(_md_table(rep.steps[[c for c in cols if c in rep.steps]], ".4g"))
    lines.append(f"\n_Generated by `noiseshift report` in {rep.timings.get('total', 0):.1f} s "
                 f"from `{rep.path}` and `{rep.estimates}`._\n")
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(runs) -> dict[str, str]:
    cmap = _plt().get_cmap("tab10")
    return {r.name: cmap(i % 10) for i, r in enumerate(runs)}


def _shade(ax, zones) -> None:
    for k, (lo, hi) in enumerate(zones):
        ax.axvspan(lo, hi, color="0.85", zorder=0, label="blind zone" if k == 0 else None)


def make_figures(rep: Report, out: Path, progress=None) -> dict[str, Path]:
    plt = _plt()
    figs = {}
    makers = [("t_prime", _fig_t_prime), ("delta", _fig_delta), ("density", _fig_density),
              ("quality_vs_scale", _fig_quality_scale)]
    for k, (name, fn) in enumerate(makers):
        fig = fn(rep)
        if fig is not None:
            figs[name] = out / f"{name}.png"
            fig.savefig(figs[name], dpi=110, bbox_inches="tight")
            plt.close(fig)
        if progress is not None:
            progress("figures", k + 1, len(makers) + 1)
    figs.update(_sample_grids(rep, out))
    if progress is not None:
        progress("figures", len(makers) + 1, len(makers) + 1)
    return figs


def _zones_of(rep) -> list:
    for rd in rep.runs:
        if rep.main in rd.readings:
            return rd.readings[rep.main].blind_zones
    return []


def _fig_t_prime(rep):
    plt = _plt()
    colors = _colors(rep.runs)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    _shade(ax, _zones_of(rep))
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls=":", label="t' = t")
    ref_drawn = False
    for rd in rep.runs:
        r = rd.readings.get(rep.main)
        if r is None:
            continue
        lo, hi = np.quantile(r.t_hat, [0.1, 0.9], axis=1)
        ax.fill_between(rd.t, lo, hi, color=colors[rd.name], alpha=0.15, lw=0)
        ax.plot(rd.t, r.t_hat.mean(1), color=colors[rd.name], lw=1.5, label=rd.name)
        if not ref_drawn:
            ax.plot(rd.t, r.reference, color="k", lw=0.9, ls="--",
                    label="reading of true x_t")
            ref_drawn = True
    ax.set(xlabel="scheduled t", ylabel=f"t' ({rep.main}; band: 10-90% of samples)",
           xlim=(0, 1), ylim=(0, 1), title="Noise level the states carry")
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _fig_delta(rep):
    plt = _plt()
    colors = _colors(rep.runs)
    two = rep.independent is not None
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 6, 4.4),
                             squeeze=False, sharey=False)
    for ax, name in zip(axes[0], [rep.main] + ([rep.independent] if two else []), strict=True):
        st = rep.steps[rep.steps.estimator == name]
        zones = next((rd.readings[name].blind_zones for rd in rep.runs
                      if name in rd.readings), [])
        _shade(ax, zones)
        ax.axhline(0, color="0.4", lw=0.8)
        for rd in rep.runs:
            s = st[st.run == rd.name]
            if s.empty:
                continue
            c = colors[rd.name]
            ax.fill_between(s.t, s.ci_low, s.ci_high, color=c, alpha=0.2, lw=0)
            ax.plot(s.t, s.delta, color=c, lw=1.5, marker="o", ms=2.5, label=rd.name)
            if name == rep.main and s.pred_b.notna().any():
                ax.plot(s.t, s.pred_b, color=c, lw=1, ls="--")
        if name == rep.main:
            ax.plot([], [], color="0.3", ls="--", lw=1, label="route (b) prediction")
            for k, f in enumerate(_flat_points(rep.m2, rep.runs[0].schedule)):
                ax.axvline(f, color="0.5", ls="-.", lw=0.8,
                           label="flat second moment (t*)" if k == 0 else None)
        ax.set(xlabel="scheduled t", ylabel="delta = t' - reference(t)", xlim=(0, 1),
               title=f"Shift read by {name}" + (" (independent)" if name != rep.main else ""))
        ax.legend(fontsize=7)
        _clip_ylim(ax, st if name == rep.main else st.drop(columns="pred_b"))
    fig.tight_layout()
    return fig


def _clip_ylim(ax, st) -> None:
    """Keep the axis on the measured shift, with room for route (b) up to twice its range
    (near a flat second moment route (b) runs off to infinity)."""
    lo = np.nanmin(st.ci_low) if len(st) else -0.05
    hi = np.nanmax(st.ci_high) if len(st) else 0.05
    span = max(abs(lo), abs(hi), 0.01)
    if "pred_b" in st and st.pred_b.notna().any():
        pred = st.pred_b.clip(-2 * span, 2 * span)
        lo, hi = min(lo, np.nanmin(pred)), max(hi, np.nanmax(pred))
    pad = 0.1 * max(hi - lo, 0.02)
    ax.set_ylim(min(lo, 0) - pad, max(hi, 0) + pad)


def _chosen_steps(t: np.ndarray, k: int = 4) -> list[int]:
    idx = np.unique(np.linspace(1 if len(t) > k else 0, len(t) - 1, k).round().astype(int))
    return [int(i) for i in idx]


def _fig_density(rep):
    from scipy.stats import gaussian_kde

    plt = _plt()
    colors = _colors(rep.runs)
    runs = [rd for rd in rep.runs if rep.main in rd.readings]
    if not runs:
        return None
    steps = _chosen_steps(runs[0].t)
    fig, axes = plt.subplots(1, len(steps), figsize=(3.0 * len(steps), 3.2), squeeze=False)
    grid = np.linspace(0, 1, 400)
    for ax, i in zip(axes[0], steps, strict=True):
        t = runs[0].t[i]
        ref = runs[0].readings[rep.main].reference[i]
        vals_all = []
        for rd in runs:
            if i >= len(rd.t):
                continue
            v = rd.readings[rep.main].t_hat[i].astype(np.float64)
            vals_all.append(v)
            if np.ptp(v) > 1e-9:
                ax.plot(grid, gaussian_kde(v)(grid), color=colors[rd.name], lw=1.3,
                        label=rd.name)
        ax.axvline(ref, color="k", ls="--", lw=0.9, label="reading of true x_t")
        allv = np.concatenate(vals_all)
        lo, hi = np.quantile(allv, [0.005, 0.995])
        pad = max(0.05, 0.3 * (hi - lo))
        ax.set(xlim=(max(0, min(lo, ref) - pad), min(1, max(hi, ref) + pad)),
               title=f"t = {t:.3f}", xlabel="t'")
        ax.set_yticks([])
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Density of t' ({rep.main}) at chosen steps", fontsize=10)
    fig.tight_layout()
    return fig


def _fig_quality_scale(rep):
    """FD and mean |delta| against scale, for runs that differ only in one guidance scale."""
    if "fd" not in rep.summary:
        return None
    s = rep.summary.set_index("run")
    fams: dict[str, list] = {}
    for rd in rep.runs:
        fs = _scale_of(rd.guidance)
        if fs is not None and rd.name in s.index and _has(s.loc[rd.name], "fd"):
            fams.setdefault(fs[0], []).append((fs[1], rd))
    base = next((rd for rd in rep.runs if rd.name == rep.baseline), None)
    fams = {k: v for k, v in fams.items() if len({sc for sc, _ in v} | (
        {0.0} if base is not None else set())) >= 3}
    if not fams:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    paired = rep.paired.set_index("run") if not rep.paired.empty else pd.DataFrame()
    use_d = "d_fd" in paired
    for members in fams.values():
        if base is not None and rep.baseline in s.index:
            members = [(0.0, base)] + [m for m in members if m[0] != 0.0]
        members.sort(key=lambda m: m[0])
        sc = [m[0] for m in members]
        label = _family_name(members[-1][1].guidance)
        if use_d:
            rows = [paired.loc[m[1].name] if m[1].name in paired.index else
                    pd.Series({"d_fd": 0.0, "d_fd_lo": 0.0, "d_fd_hi": 0.0}) for m in members]
            _errorbar(axes[0], sc, rows, "d_fd", label)
        else:
            _errorbar(axes[0], sc, [s.loc[m[1].name] for m in members], "fd", label)
        _errorbar(axes[1], sc, [s.loc[m[1].name] for m in members], "mean_abs_delta", label)
    if use_d:
        axes[0].axhline(0, color="0.4", lw=0.8)
    axes[0].set(xlabel="guidance scale", title=(
        f"FD - FD({rep.baseline}), paired 95% CI" if use_d else "FD (95% CI)"))
    axes[1].set(xlabel="guidance scale", title=f"mean |delta| ({rep.main})")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _errorbar(ax, x, rows, key, label) -> None:
    v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
    lo = np.array([r.get(f"{key}_lo", np.nan) for r in rows], dtype=float)
    hi = np.array([r.get(f"{key}_hi", np.nan) for r in rows], dtype=float)
    ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=label)


def _tile(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (rows*(H+pad), ncol*(W+pad), C) image in [0, 1]."""
    n, c, h, w = images.shape
    rows = int(math.ceil(n / ncol))
    canvas = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad, c))
    pix = (np.clip(images, -1, 1) + 1) / 2
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y:y + h, x:x + w] = pix[k].transpose(1, 2, 0)
    return canvas


def _sample_grids(rep, out: Path) -> dict[str, Path]:
    """One grid per image run (first samples, requested class above each): drawn as one
    image, not one axis per sample, so it takes milliseconds."""
    plt = _plt()
    figs = {}
    for rd in rep.runs:
        if rd.samples is None or len(rd.shape) != 3 or rd.shape[0] not in (1, 3):
            continue
        k = min(MAX_GRID, rd.n)
        ncol = int(math.ceil(math.sqrt(k)))
        img = _tile(np.asarray(rd.samples[:k], dtype=np.float64), ncol)
        h, w = rd.shape[1] + 1, rd.shape[2] + 1
        fig, ax = plt.subplots(figsize=(0.55 * ncol + 0.2, 0.6 * math.ceil(k / ncol) + 0.4))
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        if rd.labels is not None:
            for j in range(k):
                r, q = divmod(j, ncol)
                ax.text(1 + q * w, 1 + r * h, str(int(rd.labels[j])), color="tab:red",
                        fontsize=6, va="top", ha="left")
        ax.set_axis_off()
        ax.set_title(f"{rd.name}: first {k} samples"
                     + (" (requested class in red)" if rd.labels is not None else ""),
                     fontsize=8)
        path = out / f"samples_{_safe(rd.name)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figs[f"samples_{rd.name}"] = path
    return figs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
