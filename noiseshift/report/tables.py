"""The report as terminal tables (rich) that read at 80 columns with no cell cut.

A table too wide for the terminal is stacked: each table repeats the run column and takes
as many metric columns as the width allows, so a wider terminal shows more columns per
table. Run names wrap rather than being cut when even one metric column leaves them too
little room. Numbers have 3 significant digits; a 95% CI reads 'value [lo,hi]', all three
to the same decimals (report.md and the CSV files have every digit)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from .runs import LATE, Report
from .text import metric_names

MISSING = "-"


@dataclass(frozen=True)
class Column:
    """A column of the summary or paired table: its key there, title and sign."""

    key: str
    title: str
    signed: bool = False


def shift_columns(rep: Report) -> list[Column]:
    return [Column("mean_delta", "mean Δ", True), Column("mean_abs_delta", "mean |Δ|"),
            Column("mean_abs_delta_late", f"late |Δ| (t≤{LATE:g})"),
            Column("ind_mean_abs_delta", f"|Δ| {rep.independent}")]


QUALITY = [Column("fd", "FD"), Column("precision", "precision"), Column("recall", "recall"),
           Column("accuracy", "accuracy"), Column("log_likelihood", "log-lik"),
           Column("energy", "energy dist")]
DEMO_QUALITY = ("fd", "accuracy", "log_likelihood")  # the rest: in summary.csv


def paired_columns(rep: Report) -> list[Column]:
    return [Column("d_mean_abs_delta", "d mean |Δ|", True),
            Column("d_ind_mean_abs_delta", f"d |Δ| {rep.independent}", True),
            Column("d_fd", "d FD", True), Column("d_precision", "d precision", True),
            Column("d_recall", "d recall", True), Column("d_accuracy", "d accuracy", True),
            Column("d_log_likelihood", "d log-lik", True)]


# -- numbers -------------------------------------------------------------------------------------

def _decimals(*values: float) -> int:
    """Decimals that give the largest of the values 3 significant digits (0 to 6)."""
    m = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if m == 0.0:
        return 3
    return min(6, max(0, 2 - math.floor(math.log10(m))))


def number(v: float, signed: bool = False, decimals: int | None = None) -> str:
    """v to 3 significant digits (or `decimals`), '+' in front when signed and v >= 0."""
    if v is None or not math.isfinite(v):
        return MISSING
    d = _decimals(v) if decimals is None else decimals
    return f"{v:{'+' if signed else ''}.{d}f}"


def ci_cell(row: dict, key: str, signed: bool = False) -> str:
    """'value [lo,hi]' from the columns key, key_lo, key_hi; 'value' without a CI."""
    v = row.get(key)
    if v is None or not math.isfinite(v):
        return MISSING
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return number(v, signed)
    d = max(_decimals(v), _decimals(lo, hi))  # 3 significant digits for each
    return f"{number(v, signed, d)} [{number(lo, False, d)},{number(hi, False, d)}]"


# -- stacking ------------------------------------------------------------------------------------

def stacked(title: str, rows: list[dict], columns: list[Column], width: int,
            bold: str | None = None) -> list:
    """The title and as many tables as `width` needs to show every column of `columns`
    (those the rows hold) beside the run names, no cell cut. bold: a run to set in bold."""
    columns = [c for c in columns if any(c.key in r for r in rows)]
    if not rows or not columns:
        return []
    names = [str(r["run"]) for r in rows]
    cells = {c.key: [ci_cell(r, c.key, c.signed) for r in rows] for c in columns}
    widths = {c.key: max(len(c.title), *map(len, cells[c.key])) for c in columns}
    name_w = max(len("run"), *map(len, names))
    out: list = []
    groups = _pack(columns, widths, name_w, width)
    for k, group in enumerate(groups):
        part = f" (part {k + 1} of {len(groups)})" if len(groups) > 1 else ""
        out.append(Text(title + part, style="bold"))
        room = width - 1 - sum(widths[c.key] + 3 for c in group) - 3
        table = Table(title_justify="left")
        table.add_column("run", overflow="fold", min_width=min(name_w, max(room, 8)),
                         max_width=max(room, 8))
        for c in group:
            table.add_column(c.title, justify="right", overflow="fold")
        for i, name in enumerate(names):  # Text: a "[...]" in a cell is no markup
            table.add_row(Text(name), *[Text(cells[c.key][i]) for c in group],
                          style="bold" if name == bold else None)
        out.append(table)
    return out


def _pack(columns: list[Column], widths: dict, name_w: int, width: int) -> list[list[Column]]:
    """Deal the columns, in order, into groups whose table fits in `width` (one at least)."""
    groups: list[list[Column]] = [[]]
    used = 1 + name_w + 3  # left edge, run column
    for c in columns:
        need = widths[c.key] + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = 1 + name_w + 3
        groups[-1].append(c)
        used += need
    return groups


# -- the tables ----------------------------------------------------------------------------------

def _meters(rep: Report) -> str:
    return f"{rep.main} meter" + (f", independent: {rep.independent}" if rep.independent
                                  else "")


def run_tables(rep: Report, width: int = 80, quality: tuple[str, ...] | None = None) -> list:
    """Per run: the shift Δ = t' - reference(t) on readable steps, and sample quality.
    quality: the quality keys to show (default all)."""
    cols = shift_columns(rep) + [c for c in QUALITY if quality is None or c.key in quality]
    rows = rep.summary.to_dict("records")
    return stacked(f"noise shift per run ({_meters(rep)}), 95% CI",
                   rows, cols, width, bold=rep.baseline)


def paired_tables(rep: Report, width: int = 80) -> list:
    """Per run: run - baseline, paired by seed (unpaired CIs where seeds differ)."""
    if rep.paired.empty:
        return []
    return stacked(f"against the baseline {rep.baseline!r} (run - baseline, paired 95% CI)",
                   rep.paired.to_dict("records"), paired_columns(rep), width)


def metric_key(columns) -> Text:
    """Every metric among the tables' `columns` (their keys), named in full."""
    cols = list(columns)
    return Text("Metrics: " + "; ".join(metric_names(cols).values()) + ".", style="dim")


def warning_lines(rep: Report) -> list:
    """The sanity warnings (see sanity.py), to print above every table."""
    return [Text.assemble(("warning:", "bold red"), f" run {w['run']!r}: {w['problem']}.")
            for w in rep.warnings]


def report_tables(rep: Report, width: int = 80) -> list:
    """What `noiseshift report` prints: the sanity warnings, the per-run tables, the paired
    ones, the metrics."""
    return warning_lines(rep) + run_tables(rep, width) + paired_tables(rep, width) + [
        metric_key([*rep.summary.columns, *rep.paired.columns])]


def demo_tables(rep: Report, width: int = 80) -> list:
    """What `noiseshift demo` prints: the sanity warnings, the shift per run with FD,
    accuracy (digits) or log-likelihood (mixtures); precision, recall and the rest are in
    summary.csv."""
    return warning_lines(rep) + run_tables(rep, width, quality=DEMO_QUALITY) + [
        metric_key(k for k in DEMO_QUALITY if k in rep.summary)]
