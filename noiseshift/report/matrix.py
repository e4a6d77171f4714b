"""The table, flag list and figure of `noiseshift audit --diffusers-matrix`
(`integrations.scheduler_matrix.audit_matrix`)."""

from __future__ import annotations

import math
from pathlib import Path

from rich import box
from rich.table import Table

__all__ = ["flag_lines", "matrix_figure", "matrix_rich"]

LEGEND = ("|shift|: mean |shift| at the most steps, +- half its 95% CI; p: fitted order of "
          "|shift| in the steps; label: largest label error, resid: residual noise of the "
          "final sample (both in t, mixture, most steps); 1st: first-step error (1 - the t "
          "pure noise is labelled); s: seconds for the configuration; !: flagged (below).")


def _pm(est) -> str:
    half = (est.hi - est.lo) / 2
    return f"{est.value:.4f}" if not math.isfinite(half) else f"{est.value:.4f}±{half:.4f}"


def matrix_rich(result) -> Table:
    """One row per configuration, flagged first, then by mean |shift| (reads at 80 columns:
    only the configuration's name wraps)."""
    tab = Table(title=f"diffusers {result.version}, perfect model, n={result.n}: "
                f"{len(result.rows)} configurations", title_justify="left",
                box=box.SIMPLE_HEAD, padding=(0, 1), caption=LEGEND, caption_justify="left")
    tab.add_column("configuration", ratio=1, overflow="fold")
    for col in ("|shift|", "p", "label", "resid", "1st", "s", "!"):
        tab.add_column(col, justify="right", no_wrap=True)
    for r in result.rows:
        last = r.runs[-1]
        tab.add_row(r.label, _pm(last.mean_abs),
                    "-" if not math.isfinite(r.order) else f"{r.order:.1f}",
                    f"{last.label_error.value:+.3f}", f"{last.residual.value:+.3f}",
                    f"{max(x.first_step for x in r.runs):.3f}", f"{r.seconds:.1f}",
                    "!" if r.flag else "")
    return tab


def flag_lines(result) -> list[str]:
    """One line per flagged configuration, then one per skipped class."""
    lines = [f"! {r.label}: {r.flag}" for r in result.rows if r.flag]
    lines += [f"skipped {name}: {why}" for name, why in sorted(result.skipped.items())]
    return lines


def matrix_figure(result, path: str | Path) -> Path:
    """Mean |shift| at the most steps against the fitted order, one point per configuration;
    flagged ones in red and named."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    for flagged, color in ((False, "tab:blue"), (True, "tab:red")):
        rows = [r for r in result.rows if bool(r.flag) == flagged]
        ax.scatter([r.runs[-1].mean_abs.value for r in rows], [r.order for r in rows],
                   s=14, color=color, label="flagged" if flagged else "on schedule")
    for r in [r for r in result.rows if r.flag][:12]:
        ax.annotate(r.label, (r.runs[-1].mean_abs.value, r.order), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"mean |shift| at {result.rows[0].runs[-1].steps} steps (perfect model)")
    ax.set_ylabel("fitted order of mean |shift| in the steps")
    ax.set_title(f"diffusers {result.version} schedulers with a perfect model", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
