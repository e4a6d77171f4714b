"""`noiseshift train`: fit a small denoiser on built-in or user data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..data import load_data
from ..defaults import DEFAULT_DENOISER, DEFAULT_SCHEDULE
from ..distributed import is_main
from ..errors import NoiseshiftError
from ..io.paths import refuse_overwriting_inputs
from ..io.schedules import schedule_from
from ..models import describe, save_model
from ..runtime import resolve_device
from ..training import train_denoiser
from .common import app, console, data_option, print_json, progress, size_option
from .inputs import data_spec


def state_path(out: Path) -> Path:
    """Where `train` keeps its resumable training state: beside the model file."""
    return out.with_name(out.stem + ".state.pt")


@app.command("train")
def train_command(
    data: str = data_option("digits"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the model checkpoint."),
    schedule: str = typer.Option(DEFAULT_SCHEDULE, "--schedule", help="Noise schedule: "
                                 "linear, vp-cosine, vp-linear or ve."),
    steps: int = typer.Option(DEFAULT_DENOISER["steps"], "--steps", min=1,
                              help="Optimiser steps."),
    batch_size: int = typer.Option(DEFAULT_DENOISER["batch_size"], "--batch-size", min=1,
                                   help="Training examples per step."),
    lr: float = typer.Option(DEFAULT_DENOISER["lr"], "--lr", min=0.0, max=10.0,
                             help="Peak AdamW learning rate (cosine decay to lr/10)."),
    t_dropout: float = typer.Option(DEFAULT_DENOISER["t_dropout"], "--t-dropout", min=0.0,
                                    max=1.0, help="Fraction of rows trained with the null-t "
                                    "token (noise-condition dropout; classifier-free NAG "
                                    "needs it > 0)."),
    class_dropout: float = typer.Option(DEFAULT_DENOISER["class_dropout"], "--class-dropout",
                                        min=0.0, max=1.0, help="Fraction of rows trained "
                                        "with the null-class token (CFG needs it > 0)."),
    prediction: str = typer.Option(DEFAULT_DENOISER["prediction"], "--prediction",
                                   help="What the network predicts: velocity, eps, x0 or "
                                   "score."),
    arch: str = typer.Option("auto", "--arch", help="auto (UNet for images, MLP for "
                             "vectors), unet or mlp."),
    unconditional: bool = typer.Option(False, "--unconditional", help="Ignore the data's "
                                       "labels."),
    size: int = size_option(),
    side: int = typer.Option(None, "--side", min=8, help="Same as --size (kept for old "
                             "scripts)."),
    dim: int = typer.Option(64, "--dim", min=1, max=16384, help="Dimension for --data gmm."),
    seed: int = typer.Option(DEFAULT_DENOISER["seed"], "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the training state "
                                "saved beside --out (OUT.state.pt), e.g. after an interrupt "
                                "or to train longer with a larger --steps."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Train a denoiser with the flow-matching objective and save it to --out.

    A state x_t = alpha(t) x0 + sigma(t) eps is drawn at t ~ U[0, 1] and the network learns
    the target in its --prediction parametrisation (by default the velocity). A fraction
    --t-dropout of rows sees a learned null-t token instead of t, and --class-dropout a
    learned null-class token, so the model can serve classifier-free NAG and CFG. The
    default settings train the built-in default model: a ~96k-parameter UNet on 16x16
    digits, sized for about three minutes on two CPU cores. The training state is saved
    beside --out (OUT.state.pt) for --resume.

    Example: `noiseshift train --data digits --out model.pt`, then
    `noiseshift sample --model model.pt`.
    """
    dataset = load_data(data_spec(data, size or side, dim))
    refuse_overwriting_inputs(out, dataset.spec, schedule)
    if out.exists() and out.is_dir():
        raise NoiseshiftError("is a folder; --out needs a file name", out)
    state = state_path(out)
    if resume and not state.exists():
        console.print(f"[yellow]no saved training state at {state}; starting fresh[/]")
    dev = resolve_device(device)
    with progress(json_out) as p:
        task = p.add_task(f"training on {dataset.name} ({dev.type})", total=steps)

        def on_step(info):
            p.update(task, completed=info["step"], description=f"training, loss "
                     f"{info['loss']:.4f}")

        model = train_denoiser(
            dataset, schedule_from(schedule), arch=arch, steps=steps, batch_size=batch_size, lr=lr,
            t_dropout=t_dropout, class_dropout=class_dropout, prediction=prediction,
            conditional=not unconditional, seed=seed, device=dev, checkpoint=state,
            resume=resume, on_step=on_step)
    if is_main():  # under torchrun every rank holds the same model; rank 0 saves it
        save_model(model, out)
    summary = {"out": str(out), "state": str(state), **describe(model), **model.info}
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"Trained {summary['kind']} denoiser", show_header=False)
    rows = [
        ("saved to", str(out)), ("data", f"{dataset.name} {list(dataset.shape)}"),
        ("parameters", f"{summary['params']:,}"),
        ("schedule / prediction", f"{schedule} / {prediction}"),
        ("classes", str(summary["num_classes"])),
        ("t-dropout / class dropout", f"{t_dropout} / {summary.get('class_dropout', 0)}"),
        ("steps x batch", f"{summary['steps']} x {batch_size}"),
        ("final loss", f"{summary['final_loss']:.4f}"),
        ("time", f"{summary['seconds']:.1f} s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
