"""`noiseshift report`: tables, figures and findings from a trajectory file and its estimates."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data import load_data
from ..defaults import N_BOOT
from ..errors import NoiseshiftError
from ..io.paths import refuse_overwriting_inputs
from ..report import build_report, write_report
from ..report.tables import report_tables
from ..report.text import metric_names
from .common import app, console, data_option, fail, print_json, progress, size_option
from .inputs import data_spec


@app.command("report")
def report_command(
    file: Path = typer.Argument(Path("trajectories.h5"), help="Trajectory file (default: "
                                "trajectories.h5 in the current folder)."),
    estimates: Path | None = typer.Option(None, "--estimates", help="Estimates file (default: "
                                          "FILE's stem + .estimates.h5, as `noiseshift "
                                          "estimate` writes it)."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for report.md, "
                             "summary.csv and the figures."),
    plot: bool = typer.Option(False, "--plot", help="Draw the figures (PNG) and embed them "
                              "in report.md."),
    baseline: str | None = typer.Option(None, "--baseline", help="Run to compare against "
                                        "(default: the unguided run)."),
    estimator: str | None = typer.Option(None, "--estimator", "-e", help="Estimator whose "
                                         "readings measure the shift (default: learned, else "
                                         "the first in the estimates file)."),
    bootstrap: int = typer.Option(N_BOOT, "--bootstrap", min=20, help="Bootstrap resamples for "
                                  "every CI."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Sample-quality "
                                 "metrics (FD, precision, recall, ...)."),
    data: str = data_option(None, "For the quality metrics; default: the data the runs' "
                            "model attribute names."),
    size: int = size_option(),
    features: str | None = typer.Option(None, "--features", help="Feature space of FD, KID, "
                                        "precision and recall: inception:PATH (the FID "
                                        "Inception-v3 weights, through torch-fidelity), "
                                        "dinov2:PATH (a DINOv2 ViT checkpoint, through timm), "
                                        "module:PKG.MOD:FN (a callable, uint8 images -> "
                                        "features) or export:PATH (torch.export.save); "
                                        "default: the "
                                        "digits classifier for digits, else raw values/PCA."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Summarise the noise shift of every run, against its schedule, the theory and a baseline.

    Per run: the shift delta = t' - reference(t) with 95% CIs (overall and late, t <= 0.3),
    an independent meter's reading when the estimates hold one (subspace or oracle), sample
    quality (FD in a small digits classifier's features, precision, recall; exact metrics
    for Gaussian mixtures), and paired differences against the baseline run (same seeds:
    sample i of one run pairs with sample i of the other). The reference-free second-moment
    prediction (route b of the theory) is set next to the measured shift, with R^2 and the
    t ranges where they disagree.

    Writes `--out` (report.md, summary.csv, steps.csv, paired.csv, bands.csv; figures with
    `--plot`). The input files are never modified.

    Example: `noiseshift sample --nag-scale 1.5`, `noiseshift estimate trajectories.h5`, then
    `noiseshift report --plot`.
    """
    try:
        refuse_overwriting_inputs(out, file, estimates, data)
        dataset = None if data is None else load_data(data_spec(data, size))
        rep, md = _make(file, estimates, out, plot, baseline, estimator, bootstrap, quality,
                        json_out, dataset, features)
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        cols = [*rep.summary.columns, *rep.paired.columns]
        print_json({**rep.to_dict(), "metrics": metric_names(cols), "report": str(md)})
        return
    _print(rep)
    console.print(f"wrote [bold]{md}[/]" + (f" and {len(rep.figures)} figures" if plot else
                                           " (add --plot for figures)"))


def _make(file, estimates, out, plot, baseline, estimator, bootstrap, quality, quiet,
          dataset=None, features=None):
    with progress(quiet) as p:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = p.add_task(stage, total=total)
            p.update(tasks[stage], completed=done, total=total)

        rep = build_report(file, estimates, baseline=baseline, estimator=estimator,
                           quality=quality, n_boot=bootstrap, progress=on_progress,
                           data=dataset, features=features)
        return rep, write_report(rep, out, plot=plot, progress=on_progress)


def _print(rep) -> None:
    for renderable in report_tables(rep, console.width):
        console.print(renderable)
    if rep.feature_space:
        console.print(f"sample-quality features: {rep.feature_space}", highlight=False)
    for f in rep.findings:
        console.print(f"- {f}", highlight=False)
    for n in rep.notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
