"""Figures and tables for `noiseshift audit` and `noiseshift decompose`: the shift per step
with its CI band, one line per audited sampler (or per part: total, sampler, network)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from ..analysis.audit import AuditResult
from ..analysis.decompose import PARTS, Decomposition
from .text import MARKERS

__all__ = ["audit_figure", "audit_table", "band_rich", "convergence_rich",
           "decomposition_figure", "decomposition_rich"]


def _ci(v: float, lo: float, hi: float) -> str:
    return f"{v:+.4f} [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else f"{v:+.4f}"


def audit_table(res: AuditResult) -> Table:
    """Per step: t and the shift with its CI (fits 80 columns)."""
    tab = Table(title=res.label, title_justify="left")
    for col in ("step", "t", "shift [95% CI]"):
        tab.add_column(col, justify="right")
    for _, r in res.table.iterrows():
        tab.add_row(str(int(r.step)), f"{r.t:.3f}", _ci(r["shift"], r.shift_lo, r.shift_hi))
    return tab


def band_rich(res: AuditResult) -> Table:
    tab = Table(title=f"{res.label}: by band of t", title_justify="left")
    for col in ("t band", "steps", "mean shift [95% CI]"):
        tab.add_column(col, justify="right")
    for _, r in res.bands.iterrows():
        tab.add_row(r.band, str(int(r.steps)), _ci(r["shift"], r.shift_lo, r.shift_hi))
    return tab


def convergence_rich(label: str, df, order: float) -> Table:
    tab = Table(title=f"{label}: convergence (fitted order {order:.2f})", title_justify="left")
    for col in ("steps", "mean |shift| [95% CI]", "max |shift|"):
        tab.add_column(col, justify="right")
    for _, r in df.iterrows():
        tab.add_row(str(int(r.steps)), f"{r.mean_abs:.4f} [{r.lo:.4f}, {r.hi:.4f}]",
                    f"{r.max_abs:.4f}")
    return tab


def decomposition_rich(dec: Decomposition, frame: str = "bands") -> Table:
    """The parts by band (or per step) with CIs; one column per part (80 columns)."""
    df = dec.bands if frame == "bands" else dec.table
    tab = Table(title=f"{dec.label}: {'by band of t' if frame == 'bands' else 'per step'}",
                title_justify="left")
    tab.add_column("t band" if frame == "bands" else "t", justify="right")
    for p in PARTS:
        tab.add_column(p, justify="right")
    for _, r in df.iterrows():
        key = r.band if frame == "bands" else f"{r.t:.3f}"
        tab.add_row(key, *[f"{r[p]:+.4f}\n[{r[p + '_lo']:+.4f}, {r[p + '_hi']:+.4f}]"
                           for p in PARTS])
    return tab


def _axes(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("scheduled t (sampling runs right to left)")
    ax.set_ylabel("shift t' - t_ref(t)")
    ax.set_title(title, fontsize=9)
    ax.invert_xaxis()
    return fig, ax


def audit_figure(results: list[AuditResult], path: str | Path) -> Path:
    """The shift per step with its 95% CI, one line per audited sampler, as a PNG."""
    fig, ax = _axes("noise shift with a perfect model (the sampler alone)")
    for k, res in enumerate(results):
        tab = res.table
        line, = ax.plot(tab.t, tab["shift"], marker=MARKERS[k % len(MARKERS)], ms=3.5,
                        label=res.label)
        ax.fill_between(tab.t, tab.shift_lo, tab.shift_hi, color=line.get_color(), alpha=0.2)
    return _save(fig, ax, path)


def _save(fig, ax, path) -> Path:
    """The legend below the axes (it covers no data), then the PNG."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)),
               fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def decomposition_figure(dec: Decomposition, path: str | Path) -> Path:
    """Total, sampler and network parts per step with 95% CIs, as a PNG."""
    fig, ax = _axes(dec.label)
    tab = dec.table
    for k, (part, color) in enumerate(zip(PARTS, ("black", "tab:blue", "tab:orange"),
                                          strict=True)):
        ax.plot(tab.t, tab[part], marker=MARKERS[k], ms=3.5, color=color, label=part)
        ax.fill_between(tab.t, tab[f"{part}_lo"], tab[f"{part}_hi"], color=color, alpha=0.2)
    return _save(fig, ax, path)
