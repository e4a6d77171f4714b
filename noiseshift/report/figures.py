"""The report's figures (matplotlib, PNG): t' against t, the shift against t with route
(b)'s prediction, densities of t' at chosen steps, quality against guidance scale, and a
grid of samples per image run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

from ..io.images import save_grid
from .runs import Report
from .stats import flat_points
from .text import MARKERS, has

MAX_GRID = 64  # samples shown per grid


def make_figures(rep: Report, out: Path, progress=None) -> dict[str, Path]:
    """Draw every figure the report has data for into `out`; returns {name: PNG path}."""
    figs = {}
    makers = [("t_prime", _fig_t_prime), ("delta", _fig_delta), ("density", _fig_density),
              ("quality_vs_scale", _fig_quality_scale)]
    for k, (name, fn) in enumerate(makers):
        fig = fn(rep)
        if fig is not None:
            figs[name] = out / f"{name}.png"
            fig.savefig(figs[name], dpi=110, bbox_inches="tight")
        if progress is not None:
            progress("figures", k + 1, len(makers) + 1)
    figs.update(_sample_grids(rep, out))
    if progress is not None:
        progress("figures", len(makers) + 1, len(makers) + 1)
    return figs


SMALL_MULTIPLES = 5  # more runs than this: one panel per run instead of one crowded axis


def _styles(runs) -> dict[str, dict]:
    """Colour and marker per run, so runs differ in shape as well as colour (print, colour
    blindness)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {r.name: {"color": cmap(i % 10), "marker": MARKERS[i % len(MARKERS)], "ms": 3.5}
            for i, r in enumerate(runs)}


def _shade(ax, zones) -> None:
    for k, (lo, hi) in enumerate(zones):
        ax.axvspan(lo, hi, color="0.85", zorder=0, label="blind zone" if k == 0 else None)


def _legend_below(fig: Figure, axes) -> None:
    """One legend for the figure, below the axes, so it covers no data."""
    seen: dict = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=min(4, len(seen)), fontsize=8, frameon=False)


def _grid(n: int, width: float, height: float):
    """A constrained-layout figure with n panels (3 per row), shared axes."""
    from matplotlib.figure import Figure

    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(width * ncol, height * nrow + 0.8), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def _t_prime_runs(ax, rep: Report, runs, styles, base=None) -> None:
    _shade(ax, rep.main_zones())
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls=":", label="t' = t")
    if base is not None and rep.main in base.readings:
        ax.plot(base.t, base.readings[rep.main].t_hat.mean(1), color="0.6", lw=1.2,
                label=f"{base.name} (baseline)")
    for rd in runs:
        r = rd.readings[rep.main]
        lo, hi = np.quantile(r.t_hat, [0.1, 0.9], axis=1)
        st = styles[rd.name]
        ax.fill_between(rd.t, lo, hi, color=st["color"], alpha=0.15, lw=0)
        ax.plot(rd.t, r.t_hat.mean(1), lw=1.5, label=rd.name, **st)
    ref = rep.runs[0].readings.get(rep.main) if rep.runs else None
    if ref is not None:
        ax.plot(rep.runs[0].t, ref.reference, color="k", lw=0.9, ls="--",
                label="reading of true x_t")
    ax.set(xlim=(0, 1), ylim=(0, 1))


def _fig_t_prime(rep: Report) -> Figure | None:
    from matplotlib.figure import Figure

    runs = [rd for rd in rep.runs if rep.main in rd.readings]
    if not runs:
        return None
    styles = _styles(rep.runs)
    label = f"t' read by {rep.main} (band: 10-90% of samples)"
    if len(runs) <= SMALL_MULTIPLES:
        fig = Figure(figsize=(5.6, 5.4), layout="constrained")
        ax = fig.subplots()
        _t_prime_runs(ax, rep, runs, styles)
        ax.set(xlabel="scheduled t", ylabel=label)
        axes = [ax]
    else:
        base = next((rd for rd in runs if rd.name == rep.baseline), None)
        fig, axes = _grid(len(runs), 3.2, 3.0)
        for ax, rd in zip(axes.ravel(), runs, strict=False):
            _t_prime_runs(ax, rep, [rd], styles, None if rd is base else base)
            ax.set_title(rd.name, fontsize=9)
        for ax in axes[:, 0]:
            ax.set_ylabel(label if len(axes) == 1 else "t'")
        for ax in axes[-1]:
            ax.set_xlabel("scheduled t")
    fig.suptitle("Noise level the states carry, against their schedule")
    _legend_below(fig, axes)
    return fig


def _fig_delta(rep: Report) -> Figure:
    from matplotlib.figure import Figure

    two = rep.independent is not None
    fig = Figure(figsize=(11 if two else 6, 5.0), layout="constrained")
    axes = fig.subplots(1, 2 if two else 1, squeeze=False, sharey=False)
    for ax, name in zip(axes[0], [rep.main] + ([rep.independent] if two else []), strict=True):
        _delta_panel(ax, rep, name)
    _legend_below(fig, axes)
    return fig


def _delta_panel(ax, rep: Report, name: str) -> None:
    styles = _styles(rep.runs)
    st = rep.steps[rep.steps.estimator == name]
    zones = next((rd.readings[name].blind_zones for rd in rep.runs if name in rd.readings), [])
    _shade(ax, zones)
    ax.axhline(0, color="0.4", lw=0.8)
    lo, hi = _measured_ylim(st)
    for rd in rep.runs:
        s = st[st.run == rd.name]
        if s.empty:
            continue
        sty = styles[rd.name]
        # Many runs' CI bands pile up into one brown smear: fainter the more there are.
        ax.fill_between(s.t, s.ci_low, s.ci_high, color=sty["color"], lw=0,
                        alpha=0.2 if len(rep.runs) <= SMALL_MULTIPLES else 0.07)
        ax.plot(s.t, s.delta, lw=1.5, label=rd.name, **sty)
        if name == rep.main and s.pred_b.notna().any():
            _prediction(ax, s.t.to_numpy(), s.pred_b.to_numpy(), lo, hi, sty["color"])
    if name == rep.main:
        ax.plot([], [], color="0.3", ls="--", lw=1, label="route (b) prediction (theory)")
        for k, f in enumerate(flat_points(rep.m2, rep.runs[0].schedule)):
            ax.axvline(f, color="0.5", ls="-.", lw=0.8,
                       label="flat second moment (t*)" if k == 0 else None)
    ax.set(xlabel="scheduled t", ylabel="shift Δ = t' - reference(t)", xlim=(0, 1),
           ylim=(lo, hi), title=f"Shift read by {name}" + (
               " (independent)" if name != rep.main else ""))


def _measured_ylim(st) -> tuple[float, float]:
    """y-limits from the measured shift and its CIs (and 0), never from the predictions."""
    lo = np.nanmin(st.ci_low) if len(st) else -0.05
    hi = np.nanmax(st.ci_high) if len(st) else 0.05
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.08 * max(hi - lo, 0.02)
    return lo - pad, hi + pad


def _prediction(ax, t, pred, lo, hi, color) -> None:
    """Route (b)'s prediction clipped to the measured range; a triangle on the edge marks
    each step where it runs off the axis (near a flat second moment it diverges)."""
    inside = np.clip(pred, lo, hi)
    ax.plot(t, inside, color=color, lw=1, ls="--")
    off = np.isfinite(pred) & (pred != inside)
    for where, marker in ((pred > hi, "^"), (pred < lo, "v")):
        m = off & where
        if m.any():
            ax.plot(t[m], inside[m], ls="none", marker=marker, ms=6, color=color, mec="k",
                    mew=0.5, clip_on=False)
    if off.any():
        ax.plot([], [], ls="none", marker="^", ms=6, color="0.6", mec="k", mew=0.5,
                label="prediction beyond the axis")


def _chosen_steps(t: np.ndarray, k: int = 4) -> list[int]:
    idx = np.unique(np.linspace(1 if len(t) > k else 0, len(t) - 1, k).round().astype(int))
    return [int(i) for i in idx]


def _fig_density(rep: Report) -> Figure | None:
    from matplotlib.figure import Figure

    runs = [rd for rd in rep.runs if rep.main in rd.readings]
    if not runs:
        return None
    steps = _chosen_steps(runs[0].t)
    fig = Figure(figsize=(3.0 * len(steps), 3.8), layout="constrained")
    axes = fig.subplots(1, len(steps), squeeze=False)
    for ax, i in zip(axes[0], steps, strict=True):
        _density_panel(ax, rep, runs, i)
    axes[0][0].set_ylabel("density over samples (KDE)")
    fig.suptitle(f"Density of t' ({rep.main}) at chosen steps", fontsize=10)
    _legend_below(fig, axes)
    return fig


def _density_panel(ax, rep: Report, runs, i: int) -> None:
    from scipy.stats import gaussian_kde

    styles = _styles(rep.runs)
    grid = np.linspace(0, 1, 400)
    t = runs[0].t[i]
    ref = runs[0].readings[rep.main].reference[i]
    vals_all = []
    for rd in runs:
        if i >= len(rd.t):
            continue
        v = rd.readings[rep.main].t_hat[i].astype(np.float64)
        vals_all.append(v)
        if np.ptp(v) > 1e-9:
            ax.plot(grid, gaussian_kde(v)(grid), lw=1.3, label=rd.name, markevery=40,
                    **styles[rd.name])
    ax.axvline(ref, color="k", ls="--", lw=0.9, label="reading of true x_t")
    lo, hi = np.quantile(np.concatenate(vals_all), [0.005, 0.995])
    pad = max(0.05, 0.3 * (hi - lo))
    ax.set(xlim=(max(0, min(lo, ref) - pad), min(1, max(hi, ref) + pad)),
           title=f"t = {t:.3f}", xlabel="t'")


# -- quality against guidance scale --------------------------------------------------------------

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


def _families(rep: Report, s: pd.DataFrame) -> dict[str, list]:
    """Runs that differ only in one guidance scale, with at least three scales (the
    baseline counting as scale 0)."""
    fams: dict[str, list] = {}
    for rd in rep.runs:
        fs = _scale_of(rd.guidance)
        if fs is not None and rd.name in s.index and has(s.loc[rd.name], "fd"):
            fams.setdefault(fs[0], []).append((fs[1], rd))
    base = next((rd for rd in rep.runs if rd.name == rep.baseline), None)
    fams = {k: v for k, v in fams.items() if len({sc for sc, _ in v} | (
        {0.0} if base is not None else set())) >= 3}
    if base is not None and rep.baseline in s.index:
        fams = {k: [(0.0, base)] + [m for m in v if m[0] != 0.0] for k, v in fams.items()}
    return {k: sorted(v, key=lambda m: m[0]) for k, v in fams.items()}


def _fig_quality_scale(rep: Report) -> Figure | None:
    """FD and mean |delta| against scale, for runs that differ only in one guidance scale."""
    import pandas as pd
    from matplotlib.figure import Figure

    if "fd" not in rep.summary:
        return None
    s = rep.summary.set_index("run")
    fams = _families(rep, s)
    if not fams:
        return None
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    paired = rep.paired.set_index("run") if not rep.paired.empty else pd.DataFrame()
    use_d = "d_fd" in paired
    zero = pd.Series({"d_fd": 0.0, "d_fd_lo": 0.0, "d_fd_hi": 0.0})
    for members in fams.values():
        sc = [m[0] for m in members]
        label = _family_name(members[-1][1].guidance)
        if use_d:
            rows = [paired.loc[m[1].name] if m[1].name in paired.index else zero
                    for m in members]
            _errorbar(axes[0], sc, rows, "d_fd", label)
        else:
            _errorbar(axes[0], sc, [s.loc[m[1].name] for m in members], "fd", label)
        _errorbar(axes[1], sc, [s.loc[m[1].name] for m in members], "mean_abs_delta", label)
    if use_d:
        axes[0].axhline(0, color="0.4", lw=0.8)
    axes[0].set(xlabel="guidance scale", ylabel=(
        f"FD - FD({rep.baseline}), lower is better" if use_d else "FD, lower is better"),
        title="Fréchet distance (FD) to the data, 95% CI" + (", paired" if use_d else ""))
    axes[1].set(xlabel="guidance scale", ylabel=f"mean |Δ| ({rep.main})",
                title="Mean |shift|, 95% CI")
    _legend_below(fig, axes)
    return fig


def _errorbar(ax, x, rows, key, label) -> None:
    v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
    lo = np.array([r.get(f"{key}_lo", np.nan) for r in rows], dtype=float)
    hi = np.array([r.get(f"{key}_hi", np.nan) for r in rows], dtype=float)
    ax.errorbar(x, v, yerr=[v - lo, hi - v], marker="o", capsize=3, label=label)


# -- samples -------------------------------------------------------------------------------------

def _sample_grids(rep: Report, out: Path) -> dict[str, Path]:
    """One grid per image run: its first samples, the requested class in each corner."""
    figs = {}
    for rd in rep.runs:
        if rd.samples is None or len(rd.shape) != 3 or rd.shape[0] not in (1, 3):
            continue
        k = min(MAX_GRID, rd.n)
        labels = None if rd.labels is None else rd.labels[:k]
        title = f"{rd.name}: first {k} samples" + (
            " (corner: the class each was asked for)" if labels is not None else "")
        path = out / f"samples_{_safe(rd.name)}.png"
        figs[f"samples_{rd.name}"] = save_grid(rd.samples[:k], path, labels=labels,
                                               title=title, ncol=int(math.ceil(math.sqrt(k))))
    return figs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
