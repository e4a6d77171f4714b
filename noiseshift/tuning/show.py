"""`tune`'s result for people: a rich table that reads at 80 columns and a figure of each
candidate's FD change against the baseline with its paired CI."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from ..analysis.statistics import Estimate
from .result import TuneResult


def _places(*values: float) -> int:
    """Decimals that keep a number within the 80 columns: FDs of a weak pipeline run to
    thousands."""
    top = max(abs(v) for v in values)
    return 2 if top < 100 else 1 if top < 1000 else 0


def _ci(e: Estimate | None, fmt: str | None = None) -> str:
    if e is None:
        return "-"
    fmt = fmt or f"+.{_places(e.value, e.lo, e.hi)}f"
    return f"{e.value:{fmt}} [{e.lo:{fmt}},{e.hi:{fmt}}]"


def tune_table(res: TuneResult) -> Table:
    """Every candidate, finalists first: steps, samples scored, FD (the race's estimate at
    n_final for the rest), its paired change
    against the baseline with the 95% CI, mean |shift| by the independent meter, recall,
    milliseconds per step of one sample."""
    final = max(r.rung for r in res.rows)
    # no padding: the box's blank column rule is the one space between columns
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0,
                  title=f"tune at {res.budget} model evaluations per sample",
                  caption=f"FD in {res.space}; ~: estimated at the finalists' n from the "
                          f"row's n; |Δ|: mean |shift| by the {res.meter or 'no'} meter; * "
                          f"finalist", caption_justify="left")
    for title in ("candidate", "steps", "n", "FD", "dFD [95% CI]", "|Δ|", "recall", "ms/st"):
        name = title == "candidate"  # names fold only past 16 characters; numbers never
        table.add_column(title, justify="left" if name else "right", overflow="fold",
                         no_wrap=not name, min_width=16 if name else None)
    rec = res.recommended.name
    for r in res.rows:
        mark = "*" if r.rung == final else " "
        name = f"[bold]{r.name}[/]" if r.name == rec else r.name
        # a row the race left at n_start: its FD there is biased by more than the rows
        # differ, so show the race's estimate at n_final instead
        shown = r.estimate if r.rung != final and r.estimate else r.fd
        fd = ("~" if shown is r.estimate else "") + f"{shown.value:.{_places(shown.value)}f}"
        table.add_row(f"{mark}{name}", str(r.steps), str(r.n), fd,
                      _ci(r.dfd), "-" if r.shift is None else f"{r.shift.value:.4f}",
                      f"{r.recall.value:.3f}", f"{1e3 * r.s_per_step:.2f}")
    return table


def verdict(res: TuneResult) -> str:
    """One sentence on the recommendation."""
    rec, base = res.recommended, res.baseline
    if rec is base:
        return (f"No candidate lowered FD resolvably against {base.name} at n = {base.n}: "
                f"keep it (best finalist: {res.best.name}).")
    pct = 100 * rec.dfd.value / base.fd.value
    out = (f"{rec.name} lowers FD by {-pct:.0f}% against {base.name} ({_ci(rec.dfd)}, "
           f"n = {rec.n}, paired)")
    if rec.shift is not None and base.shift is not None:
        out += f"; mean |shift| {100 * (rec.shift.value / base.shift.value - 1):+.0f}%"
    if rec.drecall is not None:
        out += f"; recall {_ci(rec.drecall, '+.3f')}"
    best = res.best
    if best is not rec:
        out += (f". {best.name} has the lowest FD ({best.fd.value:.2f}), but its change "
                f"{_ci(best.dfd)} is not resolved")
    return out + "."


def tune_figure(res: TuneResult, path) -> Path:
    """Each candidate's FD change against the baseline at the n it reached, with its
    paired 95% CI; one colour per rung. PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res.rows if r.dfd is not None][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(rows) + 1.5))
    for y, r in enumerate(rows):
        ax.errorbar(r.dfd.value, y, xerr=[[r.dfd.value - r.dfd.lo], [r.dfd.hi - r.dfd.value]],
                    fmt="o", color=f"C{r.rung}", capsize=3,
                    label=f"n = {r.n}" if r.rung not in {q.rung for q in rows[:y]} else None)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [r.name for r in rows])
    ax.set_xlabel(f"FD change against {res.baseline.name} (paired 95% CI)")
    ax.set_title(f"tune, {res.budget} model evaluations per sample")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
