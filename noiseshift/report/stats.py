"""The shift in numbers: per-step records, per-run means with bootstrap CIs, paired
differences against the baseline, and route (b) of `theory` next to the measurement.

Shift: delta = t' - reference(t). Steps inside an estimator's blind zones are kept in the
per-step table but left out of every average, since a shift cannot be read there."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..analysis import theory
from ..analysis.statistics import Estimate, bootstrap
from ..estimation import summarize
from ..estimators.base import in_zones
from .runs import LATE, REPORT_BANDS, Reading, RunData, is_paired

if TYPE_CHECKING:
    import pandas as pd

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# -- one run -------------------------------------------------------------------------------------

def _step_mask(t: np.ndarray, zones, lo=0.0, hi=1.0) -> np.ndarray:
    return (~in_zones(t, zones)) & (t >= lo) & (t <= hi)


def _abs_mean(d: np.ndarray, mask: np.ndarray):
    return lambda i: float(np.abs(d[mask][:, i].mean(1)).mean()) if mask.any() else math.nan


def _signed_mean(d: np.ndarray, mask: np.ndarray):
    return lambda i: float(d[mask][:, i].mean()) if mask.any() else math.nan


def shift_stats(rd: RunData, reading: Reading, n_boot: int, seed: int) -> dict:
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
    for lo, hi in REPORT_BANDS:
        mask = _step_mask(t, reading.blind_zones, lo, hi) & (t > lo if lo > 0 else True)
        out[f"band_{lo:g}-{hi:g}"] = bootstrap(_signed_mean(d, mask), rd.n, n_boot=n_boot,
                                                 seed=seed)
    return out


# -- two runs ------------------------------------------------------------------------------------

def unpaired(ea: Estimate, eb: Estimate) -> Estimate:
    """eb - ea for runs with different seeds: CIs combined in quadrature."""
    half = math.hypot((ea.hi - ea.lo) / 2, (eb.hi - eb.lo) / 2)
    v = eb.value - ea.value
    return Estimate(v, v - half, v + half)


def _difference(stat, a: RunData, b: RunData, n_boot, seed, fa=None, fb=None) -> Estimate:
    if is_paired(a, b):
        return bootstrap(stat, b.n, n_boot=n_boot, seed=seed)
    # Different seeds: independent resamples, CIs combined in quadrature.
    ea = bootstrap(fa, a.n, n_boot=n_boot, seed=seed)
    eb = bootstrap(fb, b.n, n_boot=n_boot, seed=seed + 1)
    return unpaired(ea, eb)


def shift_difference(base: RunData, rd: RunData, name: str, n_boot: int, seed: int) -> dict:
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
        out[key] = _difference(lambda i, fa=fa, fb=fb: fb(i) - fa(i), base, rd, n_boot, seed,
                               fa, fb)
    return out


def _per_step_diff(base, rd, name) -> list[dict]:
    """Per-step paired difference of delta against the baseline (mean and 95% CI over
    samples), NaN when not paired or for the baseline itself."""
    empty = [{"d_delta": math.nan, "d_ci_low": math.nan, "d_ci_high": math.nan}] * len(rd.t)
    if base is None or base is rd or name not in base.readings or not is_paired(base, rd) \
            or len(base.t) != len(rd.t):
        return empty
    dd = rd.readings[name].delta - base.readings[name].delta
    mean = dd.mean(1)
    half = Z95 * dd.std(1, ddof=1) / math.sqrt(rd.n)
    return [{"d_delta": float(m), "d_ci_low": float(m - h), "d_ci_high": float(m + h)}
            for m, h in zip(mean, half, strict=True)]


# -- the tables ----------------------------------------------------------------------------------

def est_cols(prefix: str, e: Estimate | None) -> dict:
    """An Estimate as three columns: prefix, prefix_lo, prefix_hi."""
    if e is None:
        return {}
    return {prefix: e.value, f"{prefix}_lo": e.lo, f"{prefix}_hi": e.hi}


def steps_table(runs, names, base, m2) -> pd.DataFrame:
    """One row per run, estimator and step: the reading, its shift, route (b)'s prediction
    and the paired difference against the baseline."""
    import pandas as pd

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


def summary_frames(runs, main, independent, qual, n_boot, seed):
    """(summary: one row per run, bands: one row per run, estimator and band of t)."""
    import pandas as pd

    rows, bands = [], []
    for rd in runs:
        row = {"run": rd.name, "guidance": rd.label, "n": rd.n, "steps": len(rd.t),
               "complete": rd.complete}
        for name, tag in ((main, ""), (independent, "ind_")):
            if name is None or name not in rd.readings:
                continue
            st = shift_stats(rd, rd.readings[name], n_boot, seed)
            for key in ("mean_delta", "mean_abs_delta", "mean_delta_late",
                        "mean_abs_delta_late"):
                row.update(est_cols(tag + key, st[key]))
            for lo, hi in REPORT_BANDS:
                e = st[f"band_{lo:g}-{hi:g}"]
                bands.append({"run": rd.name, "estimator": name, "band": f"{lo:g}-{hi:g}",
                              "delta": e.value, "lo": e.lo, "hi": e.hi})
        for key, e in qual.get(rd.name, {}).items():
            if isinstance(e, Estimate):
                row.update(est_cols(key, e))
            else:
                row[key] = e
        rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(bands)


def paired_table(runs, base, main, independent, qdiff, n_boot, seed) -> pd.DataFrame:
    """One row per run but the baseline: differences (run - baseline) with CIs."""
    import pandas as pd

    if base is None:
        return pd.DataFrame()
    rows = []
    for rd in runs:
        if rd is base:
            continue
        row = {"run": rd.name, "baseline": base.name, "paired": is_paired(base, rd)}
        for name, tag in ((main, ""), (independent, "ind_")):
            if name is None or name not in rd.readings or name not in base.readings:
                continue
            for key, e in shift_difference(base, rd, name, n_boot, seed).items():
                row.update(est_cols(f"d_{tag}{key}", e))
        for key, e in qdiff.get(rd.name, {}).items():
            row.update(est_cols(f"d_{key}", e))
        rows.append(row)
    return pd.DataFrame(rows)


# -- route (b) next to the measurement -----------------------------------------------------------

def flat_points(m2, schedule) -> np.ndarray:
    """Interior t where the schedule's marginal second moment is flat (route (b) blind)."""
    return schedule.moment_branches(m2)[1:-1] if m2 is not None else np.zeros(0)


def theory_table(runs, steps: pd.DataFrame, main: str, m2) -> pd.DataFrame:
    """Route (b), the reference-free second-moment match, against the measured shift on the
    readable steps; r2_away leaves out steps within 0.1 of a flat point of the moment."""
    import pandas as pd

    rows = []
    for rd in runs:
        s = steps[(steps.run == rd.name) & (steps.estimator == main)]
        if s.empty or s.pred_b.isna().all():
            continue
        s = s[~s.blind]
        t, meas, pred = s.t.to_numpy(), s.delta.to_numpy(), s.pred_b.to_numpy()
        flat = flat_points(m2, rd.schedule)
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
