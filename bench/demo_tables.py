"""The demo tables of README.md and docs/results.md, written from the demo's own output.

    noiseshift demo --out demo-out
    python bench/demo_tables.py demo-out/report [--check]

Reads REPORT/summary.csv and REPORT/paired.csv and rewrites the region between
`<!-- demo:begin -->` and `<!-- demo:end -->` in README.md (shift change and FD) and
docs/results.md (the same with each run's mean delta), so the numbers in the docs are the
ones the demo printed. `--check` rewrites nothing and exits 1 when a region differs.
Shift change = change of mean |delta| against the unguided run with the same seed, read by
the learned estimator / the independent subspace meter.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DOCS = {ROOT / "README.md": False, ROOT / "docs" / "results.md": True}  # path -> wide
REGION = re.compile(r"(<!-- demo:begin -->\n).*?(<!-- demo:end -->)", re.S)
DEFAULT_RUN = "nag-estimator-step-1.5"


def _ci(v, lo, hi, digits=2) -> str:
    return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _pct(d, base) -> str:
    return f"{100 * d / base:+.0f}%".replace("+0%", "0%")


def _dfd(p) -> str:
    text = _ci(p.d_fd, p.d_fd_lo, p.d_fd_hi)
    # Bold: an improvement the CI resolves.
    return f"**{text}**" if p.d_fd_hi < 0 else text


def rows(summary: pd.DataFrame, paired: pd.DataFrame, wide: bool) -> list[str]:
    """The table's lines: the unguided run first, then every run paired with it."""
    base = summary.set_index("run").loc["unguided"]
    head = ["run", "shift change, learned / subspace", "FD", "dFD vs unguided [95% CI]"]
    first = [f"unguided (mean delta {base.mean_delta:+.3f}, subspace "
             f"{base.ind_mean_delta:+.3f}; late t <= 0.3: {base.mean_delta_late:+.3f})", "",
             f"{base.fd:.2f}", ""]
    if wide:
        head.insert(1, "mean delta (learned)")
        first.insert(1, f"{base.mean_delta:+.4f}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(first) + " |"]
    fd = summary.set_index("run").fd
    for p in paired.itertuples():
        run = summary.set_index("run").loc[p.run]
        cells = [p.run + (" (the default)" if p.run == DEFAULT_RUN else ""),
                 f"{_pct(p.d_mean_abs_delta, base.mean_abs_delta)} / "
                 f"{_pct(p.d_ind_mean_abs_delta, base.ind_mean_abs_delta)}",
                 f"{fd[p.run]:.2f}", _dfd(p)]
        if wide:
            cells.insert(1, f"{run.mean_delta:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def region(report: Path, wide: bool) -> str:
    """The text between the markers: a caption saying where the numbers come from, the table."""
    summary = pd.read_csv(report / "summary.csv")
    paired = pd.read_csv(report / "paired.csv")
    paired = paired[paired.baseline == "unguided"]
    # The default first, then the report's order.
    order = {r: (r != DEFAULT_RUN, k) for k, r in enumerate(summary.run)}
    paired = paired.sort_values("run", key=lambda s: s.map(order))
    base = summary.set_index("run").loc["unguided"]
    when = datetime.fromtimestamp((report / "summary.csv").stat().st_mtime, timezone.utc)
    caption = (f"From `noiseshift demo` written {when:%Y-%m-%d} (n = {int(base.n)}, "
               f"{int(base.steps)} steps; `python bench/demo_tables.py {report.as_posix()}` "
               "wrote this table). "
               "FD: Fréchet distance in the digits classifier's features, lower is better; "
               "dFD is paired, with a 95% bootstrap CI.")
    return caption + "\n\n" + "\n".join(rows(summary, paired, wide)) + "\n"


def rewrite(doc: Path, text: str) -> tuple[str, str]:
    """(old, new) contents of doc with its marked region replaced by text."""
    old = doc.read_text()
    if not REGION.search(old):
        raise SystemExit(f"{doc}: no <!-- demo:begin --> ... <!-- demo:end --> region")
    return old, REGION.sub(lambda m: m[1] + text + m[2], old, count=1)


def main(argv=None, docs: dict | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, nargs="?", default=Path("demo-out/report"))
    ap.add_argument("--check", action="store_true", help="exit 1 if a doc is out of date")
    args = ap.parse_args(argv)
    stale = []
    for doc, wide in (docs or DOCS).items():
        old, new = rewrite(doc, region(args.report, wide))
        if old != new:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    verb = "out of date" if args.check else "rewritten"
    print(f"{verb}: {', '.join(map(str, stale)) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
