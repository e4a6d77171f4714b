"""`noiseshift demo`: the whole story on built-in data, end to end."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.panel import Panel

from ..defaults import DEFAULT_N
from ..demo import DemoSettings, learned_vs_oracle, run_demo
from ..report.tables import demo_tables
from .common import app, console, print_json, progress


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the trajectory "
                             "file, its estimates and the report."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (smoke test, ~1 minute "
                               "cold): the numbers mean little."),
    data: str = typer.Option("digits", "--data", help="digits (16x16 sklearn digits) or gmm "
                             "(64-d Gaussian mixture, where the exact oracle is the ground "
                             "truth)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every run (runs share it, so their "
                             "samples pair up)."),
    n: int = typer.Option(None, "--n", help=f"Samples per run (default {DEFAULT_N}, quick "
                          f"128)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Train (or reuse from the cache) a denoiser with noise-condition dropout and a
    noise-level estimator; sample an unguided run, NAG in every mode and the peers (epsilon
    scaling, time-shift) with the same seeds; read the real noise level of every state; write
    `OUT/report/` (figures, summary.csv, report.md); and probe whether the model trusts its
    t input.

    The first run trains and caches both networks (a few minutes on 2 cores); later runs
    reuse them.
    """
    settings = DemoSettings.make(data, quick, seed, n)
    with progress(json_out) as p:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done=None, total=None):
            key = stage.split(" (")[0] if stage.startswith("sampling") else stage
            if key not in tasks:
                for other in tasks.values():  # one stage at a time: close the others
                    task = p.tasks[other] if other < len(p.tasks) else None
                    if task is not None and task.total is None:
                        p.update(other, total=1, completed=1)
                tasks[key] = p.add_task(stage, total=total)
            p.update(tasks[key], description=stage, completed=done or 0, total=total)

        result = run_demo(out, device=device, progress=on_progress, settings=settings)
        for task in p.tasks:
            if task.total is None:
                p.update(task.id, total=1, completed=1)
    gmm = learned_vs_oracle(settings, device) if data == "gmm" else None
    rep = result.report
    if json_out:
        payload = rep.to_dict()
        payload["timings"] = result.timings
        payload["probe"] = result.probe.to_dict() if result.probe is not None else None
        payload["learned_vs_oracle"] = gmm
        print_json(payload)
        return
    _print_summary(rep, result, gmm)


def _print_summary(rep, result, gmm) -> None:
    for renderable in demo_tables(rep, console.width):
        console.print(renderable)
    for line in rep.findings:
        console.print(f"- {line}", highlight=False)
    if gmm is not None:
        o = gmm["overall"]
        console.print(f"- learned estimator MAE {o['learned']:.4f} vs exact oracle "
                      f"{o['oracle']:.4f} ({o['learned'] / o['oracle']:.2f}x) on the same "
                      f"held-out states", highlight=False)
    if result.probe is not None:
        console.print(Panel(result.probe.verdict, title="probe: does the model trust its t?"))
    secs = result.timings
    console.print(f"report: {result.report_md}   (models {secs['models']:.0f}s, sampling "
                  f"{secs['sampling']:.0f}s, estimate {secs['estimate']:.0f}s, report "
                  f"{secs['report']:.0f}s; total {secs['total']:.0f}s)", highlight=False)

