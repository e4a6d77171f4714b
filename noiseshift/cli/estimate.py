"""`noiseshift estimate`: read the noise level t' of every recorded state."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer
from rich.table import Table

from ..estimation import estimate_file, overall
from ..io.paths import refuse_overwriting_inputs
from .common import (
    app,
    console,
    data_option,
    print_json,
    print_note,
    progress,
    size_option,
)
from .inputs import data_spec


@app.command("estimate")
def estimate_command(
    file: Path = typer.Argument(..., help="Trajectory file (HDF5, format v1), e.g. from "
                                "`noiseshift sample`."),
    estimator: list[str] = typer.Option(
        ["learned"], "--estimator", "-e", help="A checkpoint from `noiseshift train-estimator`, "
        "or `learned` (the built-in estimator for the file's data and schedule), `variance` "
        "(variance matching), `wavelet` (wavelet MAD), `oracle` (exact, Gaussian-mixture "
        "data) or `subspace` (independent meter for the built-in digits). Repeat for several."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Estimates file to write "
                                    "(default: FILE's stem + .estimates.h5 beside it)."),
    run: list[str] | None = typer.Option(None, "--run", help="Only this run (repeatable); "
                                         "default: every run in the file."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="States per "
                                          "forward pass (default: the estimator's, 1024)."),
    max_mib: float = typer.Option(64.0, "--chunk-mib", min=0.001, help="States read from the "
                                  "file at a time, in MiB: memory stays flat at about this "
                                  "much whatever the file size."),
    data: str = data_option(None, "The data the runs' model learned, for estimators fitted "
                            "on data (learned, variance, wavelet, ...); default: what each "
                            "run's `model` attribute names."),
    size: int = size_option(),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print per-step records as JSON."),
):
    """Read the noise level t' each recorded state really carries, and the shift from its
    schedule.

    For every step of every run it prints t, the mean t' over samples, the shift
    delta = t' - reference(t) with a 95% CI, and a blind-zone flag. The reference is the
    estimator's own reading of true forward-noised states at t, so an on-schedule sampler
    reads delta ~ 0; positive means noisier than scheduled. In a blind zone the estimator
    cannot tell t apart, so the shift there is not readable. Readings go to an estimates file
    (written through a temporary file and a rename); FILE is never modified, and readings
    of other estimators already in the estimates file are kept.

    Example: `noiseshift estimate trajectories.h5 -e learned -e subspace`.
    """
    refuse_overwriting_inputs(out, file, *estimator, data)
    # The bar opens on the first report, so a mistake found up front stays one line.
    with ExitStack() as stack:
        bars: dict = {}

        def task(key: str, description: str, total: int) -> tuple:
            if "p" not in bars:
                bars["p"] = stack.enter_context(progress(json_out))
            if key not in bars:
                bars[key] = bars["p"].add_task(description, total=total)
            return bars["p"], bars[key]

        def on_train(info):
            if "note" in info:
                print_note(info["note"], json_out)
            p, t = task("train", "training the learned estimator (first use only)",
                        info["steps"])
            p.update(t, completed=info["step"])

        def on_progress(done, total):
            p, t = task("read", f"estimating {file.name}", total)
            p.update(t, completed=done)

        result = estimate_file(file, estimator, out=out, runs=run, device=device,
                               batch_size=batch_size, max_bytes=int(max_mib * 2**20),
                               progress=on_progress, train_progress=on_train,
                               data=data_spec(data, size))
    if json_out:
        print_json(result.to_dict())
        return
    for r in result.results:
        _print_run(r)
    kept = f" (kept {', '.join(result.kept)})" if result.kept else ""
    console.print(f"wrote [bold]{result.path}[/]{kept}")


def _print_run(r) -> None:
    table = Table(title=f"run {r.run!r}: {r.estimator} estimator", title_justify="left")
    for col in ("step", "t", "mean t'", "delta", "95% CI", "blind"):
        table.add_column(col, justify="left" if col == "blind" else "right")
    for rec in r.records:
        style = "dim" if rec["blind"] else None
        table.add_row(str(rec["step"]), f"{rec['t']:.3f}", f"{rec['t_hat']:.3f}",
                      f"{rec['delta']:+.4f}", f"[{rec['ci_low']:+.4f}, {rec['ci_high']:+.4f}]",
                      "blind" if rec["blind"] else "", style=style)
    console.print(table)
    o = overall(r.records)
    readable = o["mean_delta_readable"]
    console.print(f"mean delta {o['mean_delta']:+.4f} over all steps"
                  + ("" if readable is None else f", {readable:+.4f} outside blind zones")
                  + f"; blind zones: {_zones(r.blind_zones)}\n")


def _zones(zones) -> str:
    return ", ".join(f"t in [{lo:.2f}, {hi:.2f}]" for lo, hi in zones) or "none"
