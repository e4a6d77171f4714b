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

Runs whose samples do not look like the data (diverged: moments or range far from the
data's, FD beyond the data's own feature variance, precision 0) get a warning on top of every
output (`Report.warnings`, `--json`'s "warnings") and no verdict in the findings.

Modules, lowest first: runs (what is read: RunData, Report), stats (shift statistics and
paired differences), sanity (do the samples look like the data?), quality (sample quality
through `analysis.quality`), findings (sentences), build (build_report), figures, markdown
(write_report), tables (terminal tables).
"""

from .build import build_report
from .figures import make_figures
from .findings import findings
from .markdown import write_report
from .runs import Report, RunData

__all__ = ["Report", "RunData", "build_report", "findings", "make_figures", "write_report"]
