"""The findings: sentences generated from the report's tables, so that no claim is written
in advance."""

from __future__ import annotations

import math

import numpy as np

from ..analysis.safety import safety_message
from .runs import LATE, Report
from .stats import flat_points
from .text import col, has


def findings(rep: Report) -> list[str]:
    """Sentences generated from the tables."""
    out = []
    zones = rep.main_zones()
    if zones:
        z = ", ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zones)
        out.append(f"The {rep.main} estimator cannot read t in {z} (blind zones): those steps "
                   f"are shown but left out of every average.")
    out.extend(_baseline_sentences(rep))
    out.extend(_disagreement_sentences(rep))
    out.extend(_safety_sentences(rep))
    suspect = {w["run"] for w in rep.warnings}
    for _, p in rep.paired.iterrows():
        out.append(_run_sentence(rep, p, suspect))
    out.extend(_quality_warnings(rep, suspect))
    out.extend(_theory_sentences(rep))
    return [f for f in out if f]


def _baseline_sentences(rep: Report) -> list[str]:
    s = rep.summary.set_index("run", drop=False)
    base = s.loc[rep.baseline] if rep.baseline in s.index else None
    out = []
    if base is not None and has(base, "mean_delta"):
        lo, hi = base.get("mean_delta_lo"), base.get("mean_delta_hi")
        drift = "drifts off its schedule" if (lo > 0 or hi < 0) else "stays on its schedule"
        late = (f"; late (t <= {LATE:g}) {col(base, 'mean_delta_late')}"
                if has(base, "mean_delta_late") else "")
        out.append(f"The baseline run {rep.baseline!r} {drift}: mean shift "
                   f"{col(base, 'mean_delta')} over all readable steps{late} "
                   f"({rep.main} estimator, 95% CI).")
        st = rep.steps[(rep.steps.run == rep.baseline) & (rep.steps.estimator == rep.main)
                       & ~rep.steps.blind]
        if not st.empty:
            worst = st.loc[st.delta.abs().idxmax()]
            out.append(f"Its largest shift is {worst.delta:+.3f} at t = {worst.t:.3f}.")
    if rep.independent and base is not None and has(base, "ind_mean_delta"):
        out.append(f"The independent {rep.independent} meter reads a mean shift of "
                   f"{col(base, 'ind_mean_delta')} for the baseline.")
    return out


#: The main and the independent meter disagree when their mean |delta| differ by more than
#: this factor (CIs apart) or their mean deltas have opposite signs (both resolved).
DISAGREE = 3.0


def meters_disagree(row) -> str | None:
    """How a summary row's two meters disagree ("x20", "opposite signs"), or None."""
    if has(row, "mean_abs_delta") and has(row, "ind_mean_abs_delta"):
        a, b = row["mean_abs_delta"], row["ind_mean_abs_delta"]
        (big, small) = ("", "ind_") if a >= b else ("ind_", "")
        if row[f"{big}mean_abs_delta_lo"] > DISAGREE * row[f"{small}mean_abs_delta_hi"]:
            return f"x{max(a, b) / max(min(a, b), 1e-12):.0f}"
    if has(row, "mean_delta") and has(row, "ind_mean_delta"):
        lo, hi, ilo, ihi = (row[k] for k in ("mean_delta_lo", "mean_delta_hi",
                                             "ind_mean_delta_lo", "ind_mean_delta_hi"))
        if (lo > 0 and ihi < 0) or (hi < 0 and ilo > 0):
            return "opposite signs"
    return None


def _disagreement_sentences(rep: Report) -> list[str]:
    """A flag for every run whose two meters disagree (resolved)."""
    if not rep.independent:
        return []
    out = []
    for _, row in rep.summary.iterrows():
        how = meters_disagree(row)
        if how:
            out.append(f"The meters disagree on {row.run!r} ({how}): mean |shift| "
                       f"{col(row, 'mean_abs_delta', '.4f')} by {rep.main}, "
                       f"{col(row, 'ind_mean_abs_delta', '.4f')} by the independent "
                       f"{rep.independent} meter. One of them reads something other than "
                       f"noise in these states (content error reads as noise to a learned "
                       f"estimator); a correction that follows it can move the states off "
                       f"the schedule.")
    return out


def _safety_sentences(rep: Report) -> list[str]:
    """What the do-no-harm check (`sample --safety`) decided for each guided run."""
    out = []
    for rd in rep.runs:
        check = rd.guidance.get("safety")
        if not check:
            continue
        line = safety_message(check)
        if line is None:
            last = check["readings"][-1]
            line = (f"safety: kept NAG scale {check['scale']:g} (independent "
                    f"{check['meter']} meter, {check['pilot_n']}-sample pilot: guided / "
                    f"unguided mean |delta| x{last['ratio']:.2f} [{last['ratio_lo']:.2f}, "
                    f"{last['ratio_hi']:.2f}])")
        out.append(f"{rd.name!r} ran under the do-no-harm check: {line}.")
    return out


def _pct(change: float, ref: float) -> str:
    return f"{100 * change / ref:+.0f}%" if ref and np.isfinite(ref) and ref > 0 else "n/a"


def _run_sentence(rep: Report, p, suspect: set) -> str:
    """What changed against the baseline; for a run (or baseline) whose samples fail the
    sanity checks, the numbers alone, with no percentage or verdict read into them."""
    broken = p.run in suspect or p.baseline in suspect
    s = rep.summary.set_index("run")
    ref = s.loc[p.baseline, "mean_abs_delta"] if "mean_abs_delta" in s else math.nan
    parts = [f"{p.run!r} against {p.baseline!r}"
             + ("" if p.paired else " (different seeds: unpaired CIs)") + ":"]
    if has(p, "d_mean_abs_delta"):
        sig = "resolved" if _excl(p, "d_mean_abs_delta") else "not resolved"
        how = "" if broken else f" ({_pct(p.d_mean_abs_delta, ref)}, {sig})"
        parts.append(f"mean |shift| changes by {col(p, 'd_mean_abs_delta')}{how} "
                     f"as read by {rep.main}")
    if has(p, "d_ind_mean_abs_delta"):
        iref = s.loc[p.baseline, "ind_mean_abs_delta"] if "ind_mean_abs_delta" in s else math.nan
        how = "" if broken else f" ({_pct(p.d_ind_mean_abs_delta, iref)})"
        parts.append(f"and by {col(p, 'd_ind_mean_abs_delta')}{how} by the independent "
                     f"{rep.independent} meter")
    if has(p, "d_fd"):
        verdict = ("samples fail the sanity checks: no verdict" if broken else "better"
                   if p.d_fd_hi < 0 else "worse" if p.d_fd_lo > 0 else "no resolvable change")
        parts.append(f"; FD changes by {col(p, 'd_fd', '+.2f')} ({verdict})")
    return " ".join(parts).replace(" ;", ";") + "."


def _excl(p, key) -> bool:
    return p[f"{key}_lo"] > 0 or p[f"{key}_hi"] < 0


def _quality_warnings(rep: Report, suspect: set) -> list[str]:
    worse = [p.run for _, p in rep.paired.iterrows()
             if p.run not in suspect and has(p, "d_mean_abs_delta") and has(p, "d_fd")
             and p.d_mean_abs_delta_hi < 0 and p.d_fd_lo > 0]
    if not worse:
        return []
    return [f"Less shift is not better samples here: {_names(worse)} shrink"
            f"{'s' if len(worse) == 1 else ''} the shift but "
            f"{'its' if len(worse) == 1 else 'their'} FD is worse than that of {rep.baseline!r}."]


def _names(names) -> str:
    q = [repr(n) for n in names]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def _theory_sentences(rep: Report) -> list[str]:
    if rep.theory.empty:
        return []
    out = []
    flat = flat_points(rep.m2, rep.runs[0].schedule)
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
    out.append(_focus_sentence(focus, len(flat) > 0))
    return out


def _focus_sentence(focus, has_flat: bool) -> str:
    msg = (f"For {focus.run!r}: mean predicted {focus.mean_predicted:+.3f}, measured "
           f"{focus.mean_measured:+.3f}")
    if has_flat:
        msg += f", R^2 {focus.r2_away:.2f} away from t*"
    if np.isfinite(focus.sign_agreement):
        msg += f"; signs agree on {100 * focus.sign_agreement:.0f}% of resolved steps"
    where = "; ".join(
        (f"t = {d['t_lo']:.2f}" if d["t_lo"] == d["t_hi"] else
         f"t in [{d['t_lo']:.2f}, {d['t_hi']:.2f}]")
        + f" (predicted {d['predicted']:+.3f}, measured {d['measured']:+.3f})"
        for d in focus.disagree[:3])
    return msg + (f". They disagree most at {where}." if where else ".")
