"""`noiseshift train-estimator`: fit a learned noise-level estimator and compare it."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..data import load_data
from ..defaults import DEFAULT_ESTIMATOR, DEFAULT_SCHEDULE
from ..distributed import is_main
from ..errors import NoiseshiftError
from ..estimators import LearnedEstimator
from ..estimators.accuracy import compare
from ..io.paths import refuse_overwriting_inputs
from ..io.schedules import schedule_from
from ..runtime import resolve_device
from .common import (
    app,
    console,
    data_option,
    print_json,
    progress,
    size_option,
)
from .inputs import data_spec


@app.command("train-estimator")
def train_estimator_command(
    data: str = data_option("digits"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the estimator."),
    schedule: str = typer.Option(DEFAULT_SCHEDULE, "--schedule", help="Noise schedule the "
                                 "states follow: linear, vp-cosine, vp-linear, ve, or "
                                 "from:traj.h5[:run] (a recorded run's schedule)."),
    steps: int = typer.Option(DEFAULT_ESTIMATOR["steps"], "--steps", min=1,
                              help="Optimiser steps."),
    bins: int = typer.Option(DEFAULT_ESTIMATOR["bins"], "--bins", min=2,
                             help="Bins of t the posterior is over."),
    batch_size: int = typer.Option(DEFAULT_ESTIMATOR["train_batch"], "--batch-size", min=1,
                                   help="Training batch."),
    lr: float = typer.Option(DEFAULT_ESTIMATOR["lr"], "--lr", min=0.0, max=10.0,
                             help="Peak AdamW learning rate."),
    size: int = size_option(),
    side: int = typer.Option(None, "--side", min=8, help="Same as --size (kept for old "
                             "scripts)."),
    dim: int = typer.Option(64, "--dim", min=1, max=16384, help="Dimension for --data gmm."),
    eval_n: int = typer.Option(4096, "--eval-n", min=1, help="Held-out states for the "
                               "accuracy table."),
    seed: int = typer.Option(DEFAULT_ESTIMATOR["seed"], "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Train a learned noise-level estimator for --data under --schedule, save it to
    --out, and print its held-out accuracy by band of t beside the baselines.

    The network (an MLP for vectors, a small conv net for images) learns a posterior over
    --bins bins of t from forward-noised data, t ~ U[0, 1]; its posterior mean is then
    calibrated with isotonic regression on held-out states, which also gives the reference
    curve (the reading of true x_t at each t) and the blind zones where a shift cannot be read.
    The table compares the held-out MAE of t with variance matching and wavelet MAD, and with
    the exact oracle on `gmm` or the subspace oracle on `digits`.

    Example: `noiseshift train-estimator --data digits --out est.pt`, then
    `noiseshift estimate trajectories.h5 --estimator est.pt`.
    """
    dataset = load_data(data_spec(data, size or side, dim))
    refuse_overwriting_inputs(out, dataset.spec, schedule)
    schedule = schedule_from(schedule)
    if out.exists() and out.is_dir():
        raise NoiseshiftError("is a folder; --out needs a file name", out)
    dev = resolve_device(device)
    est = LearnedEstimator(bins=bins, steps=steps, lr=lr, train_batch=batch_size, seed=seed,
                           device=str(dev))
    t0 = time.perf_counter()
    with progress(json_out) as p:
        task = p.add_task(f"training estimator on {dataset.name} ({dev.type})", total=steps)

        def on_step(info):
            p.update(task, completed=info["step"],
                     description=f"training estimator, loss {info['loss']:.3f}")

        est.fit(dataset, schedule, progress=on_step)
        seconds = time.perf_counter() - t0
        p.update(task, description="comparing with the baselines")
        acc = compare(est, dataset, n=eval_n, seed=seed + 1)
    if is_main():  # under torchrun every rank holds the same estimator; rank 0 saves it
        est.save(out)
    summary = {"out": str(out), **est.to_dict(), "params": est.num_parameters(),
               "seconds": round(seconds, 2), **est.train_info_, "accuracy": acc}
    if json_out:
        print_json(summary)
        return
    _print_accuracy(acc, est, dataset)
    zones = acc["blind_zones"]["learned"]
    console.print(f"saved to [bold]{out}[/] ({summary['params']:,} parameters, "
                  f"{summary['steps']} steps in {seconds:.1f} s); blind zones: "
                  f"{_zones(zones)}")


def _print_accuracy(acc: dict, est, dataset) -> None:
    names = list(acc["mae"])
    table = Table(title=f"Held-out MAE of t on {dataset.name} ({est.schedule_.name} schedule)")
    table.add_column("t band")
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right", style="bold" if name == "learned" else None)
    for k, (lo, hi) in enumerate(acc["bands"]):
        table.add_row(f"[{lo:.1f}, {hi:.1f})", str(acc["n"][k]),
                      *[_num(acc["mae"][n][k]) for n in names])
    table.add_section()
    table.add_row("all", str(sum(acc["n"])), *[_num(acc["overall"][n]) for n in names])
    console.print(table)


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _zones(zones) -> str:
    return ", ".join(f"t in [{lo:.2f}, {hi:.2f}]" for lo, hi in zones) or "none"
