"""The report's figures (matplotlib, PNG): t' against t, the shift against t with route
(b)'s prediction, densities of t' at chosen steps, quality against guidance scale, and a
grid of samples per image run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.images import save_grid
from .runs import Report
from .stats import flat_points
from .text import has

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

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


def _colors(runs) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {r.name: cmap(i % 10) for i, r in enumerate(runs)}


def _shade(ax, zones) -> None:
    for k, (lo, hi) in enumerate(zones):
        ax.axvspan(lo, hi, color="0.85", zorder=0, label="blind zone" if k == 0 else None)


def _fig_t_prime(rep: Report) -> Figure:
    from matplotlib.figure import Figure

    colors = _colors(rep.runs)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    _shade(ax, rep.main_zones())
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


def _fig_delta(rep: Report) -> Figure:
    from matplotlib.figure import Figure

    two = rep.independent is not None
    fig = Figure(figsize=(11 if two else 6, 4.4))
    axes = fig.subplots(1, 2 if two else 1, squeeze=False, sharey=False)
    for ax, name in zip(axes[0], [rep.main] + ([rep.independent] if two else []), strict=True):
        _delta_panel(ax, rep, name)
    fig.tight_layout()
    return fig


def _delta_panel(ax, rep: Report, name: str) -> None:
    colors = _colors(rep.runs)
    st = rep.steps[rep.steps.estimator == name]
    zones = next((rd.readings[name].blind_zones for rd in rep.runs if name in rd.readings), [])
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
        for k, f in enumerate(flat_points(rep.m2, rep.runs[0].schedule)):
            ax.axvline(f, color="0.5", ls="-.", lw=0.8,
                       label="flat second moment (t*)" if k == 0 else None)
    ax.set(xlabel="scheduled t", ylabel="delta = t' - reference(t)", xlim=(0, 1),
           title=f"Shift read by {name}" + (" (independent)" if name != rep.main else ""))
    ax.legend(fontsize=7)
    _clip_ylim(ax, st if name == rep.main else st.drop(columns="pred_b"))


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


def _fig_density(rep: Report) -> Figure | None:
    from matplotlib.figure import Figure

    runs = [rd for rd in rep.runs if rep.main in rd.readings]
    if not runs:
        return None
    steps = _chosen_steps(runs[0].t)
    fig = Figure(figsize=(3.0 * len(steps), 3.2))
    axes = fig.subplots(1, len(steps), squeeze=False)
    for ax, i in zip(axes[0], steps, strict=True):
        _density_panel(ax, rep, runs, i)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Density of t' ({rep.main}) at chosen steps", fontsize=10)
    fig.tight_layout()
    return fig


def _density_panel(ax, rep: Report, runs, i: int) -> None:
    from scipy.stats import gaussian_kde

    colors = _colors(rep.runs)
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
            ax.plot(grid, gaussian_kde(v)(grid), color=colors[rd.name], lw=1.3, label=rd.name)
    ax.axvline(ref, color="k", ls="--", lw=0.9, label="reading of true x_t")
    lo, hi = np.quantile(np.concatenate(vals_all), [0.005, 0.995])
    pad = max(0.05, 0.3 * (hi - lo))
    ax.set(xlim=(max(0, min(lo, ref) - pad), min(1, max(hi, ref) + pad)),
           title=f"t = {t:.3f}", xlabel="t'")
    ax.set_yticks([])


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
    fig = Figure(figsize=(10, 4))
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
            " (requested class in red)" if labels is not None else "")
        path = out / f"samples_{_safe(rd.name)}.png"
        figs[f"samples_{rd.name}"] = save_grid(rd.samples[:k], path, labels=labels,
                                               title=title, ncol=int(math.ceil(math.sqrt(k))))
    return figs


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
