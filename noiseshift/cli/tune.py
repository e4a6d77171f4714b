"""`noiseshift tune`: at a budget of model evaluations per sample, which correction to use.
The search is `tuning.tune`; this module parses the options and prints."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from ..data import load_data
from ..defaults import N_BOOT, TUNE_N_FINAL, TUNE_N_START
from ..errors import NoiseshiftError
from ..integrations.pipeline_runs import is_diffusers, refuse_diffusers_options
from ..integrations.tune_diffusers import PIPELINE_CANDIDATES as PIPELINE
from ..integrations.tune_diffusers import load_for_tune, pipeline_estimator, tune_pipeline
from ..io.paths import check_output_file, refuse_overwriting_inputs
from ..pretrained import estimator_for
from ..tuning import CANDIDATES, tune
from ..tuning.show import tune_figure, tune_table, verdict
from .common import (
    app,
    console,
    data_option,
    fail,
    print_json,
    progress,
    size_option,
    training_bar,
)
from .denoisers import denoiser_with_progress
from .inputs import data_spec


@app.command("tune")
def tune_command(
    model: str = typer.Option(None, "--model", "-m", help="Denoiser checkpoint from "
                              "`noiseshift train`, or diffusers:DIR (a pipeline folder or "
                              "cached Hub id); default: the built-in digits model."),
    budget: int = typer.Option(16, "--budget", min=1, help="Model evaluations per sample "
                               "every candidate may spend (Heun's step costs 2)."),
    n_final: int = typer.Option(None, "--n-final", min=8, help="Samples per seed of the "
                                f"finalists and the baseline (default {TUNE_N_FINAL}; "
                                "rounded up to whole blocks of --n-start, at most 128)."),
    n_start: int = typer.Option(None, "--n-start", min=8, help="Samples per seed every "
                                f"candidate starts with (default {TUNE_N_START})."),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds; every candidate "
                              "draws the same samples of each."),
    only: str = typer.Option(None, "--candidates", help="Comma list of candidate names to "
                             "search (default all; the baseline is always in)."),
    data: str = data_option(None, "Default: the data the model's checkpoint names."),
    size: int = size_option(),
    estimator: str = typer.Option(None, "--estimator", help="Noise-level estimator the NAG "
                                  "candidates read (checkpoint or name; default learned)."),
    scheduler: str = typer.Option(None, "--scheduler", help="diffusers:DIR only: the "
                                  "baseline's scheduler, as `sample --scheduler` (default: "
                                  "the folder's)."),
    spacing: str = typer.Option(None, "--spacing", help="diffusers:DIR only: the baseline's "
                                "timestep spacing (leading, linspace, trailing)."),
    bootstrap: int = typer.Option(N_BOOT, "--bootstrap", min=20, help="Bootstrap resamples."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of every candidate's FD "
                              "change with its CI."),
    device: str = typer.Option("auto", "--device"),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
):
    """Search the corrections at a fixed budget and recommend one.

    Every candidate in the table (solvers, NAG modes and scales, epsilon scaling,
    time-shift) runs at as many steps as the budget allows. A race: the baseline
    (Euler-Maruyama, unguided) draws --n-final samples and every other candidate --n-start;
    then candidates are drawn to --n-final by their estimated FD there (through the paired
    difference from one drawn there): first those estimated below the best FD there, then
    those whose CI reaches below it, while a quarter of the full grid's model evaluations
    is not spent. Same seeds for every candidate, so each FD change is paired. FD is in the
    feature space `report` uses; the shift is read by a meter no candidate is guided by (the
    subspace oracle on digits). Prints the table, the recommended command line and its
    Python lines.

    With --model diffusers:DIR (--data required) the candidates are the pipeline's: its
    scheduler as loaded (the baseline; --scheduler, --spacing as for `sample`), swapped
    solvers and spacings, Karras sigmas, epsilon scaling, DCW, estimator NAG and the
    retimed grid, each at the steps the budget allows in the pipeline's own loop.

    Example: `noiseshift tune --budget 16 --plot tune.png`;
    `noiseshift tune --model diffusers:DIR --scheduler ddim --spacing trailing --budget 10
    --data digits`.
    """
    # NOISESHIFT_TINY (tests, the README's CI run) shrinks TUNE_N_FINAL with the models
    n_final = n_final or TUNE_N_FINAL
    n_start = n_start or min(TUNE_N_START, max(8, n_final // 4))
    try:
        seed_list = _seeds(seeds)
        if plot is not None:
            check_output_file(plot, "--plot")
            refuse_overwriting_inputs(plot, model, data)
        if n_start > n_final:
            raise NoiseshiftError(f"--n-start ({n_start}) is larger than --n-final "
                                  f"({n_final})")
        search = dict(seeds=seed_list, n_start=n_start, n_final=n_final, n_boot=bootstrap)
        if is_diffusers(model):
            res = _run_pipeline(model, budget, data_spec(data, size), estimator, scheduler,
                                spacing, device, json_out, _candidates(only, PIPELINE), search)
        else:
            refuse_diffusers_options(scheduler=scheduler, spacing=spacing, prompt=None,
                                     allow_download=None)
            res = _run(model, budget, data, size, estimator, device, json_out,
                       _candidates(only, CANDIDATES), search)
        fig = tune_figure(res, plot) if plot is not None else None
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        print_json({**res.to_dict(), "command": res.command(model),
                    "python": res.python_lines(), "figure": fig and str(fig)})
        return
    console.print(tune_table(res))
    for note in res.notes:
        console.print(f"[dim]left out: {note}[/]", highlight=False)
    console.print(verdict(res), highlight=False)
    command = res.command(model)
    console.print("\n[bold]Recommended:[/] " + (command or "no `noiseshift sample` flag "
                  "sets this scheduler; use the Python lines"), highlight=False, soft_wrap=True)
    console.print("[dim]In Python:[/]\n" + res.python_lines(), highlight=False, soft_wrap=True)
    console.print(f"[dim]{res.samples} samples in {res.seconds:.0f} s[/]" +
                  (f"; figure: {fig}" if fig else ""), highlight=False)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise NoiseshiftError(f"--seeds takes comma-separated integers, got {text!r}") \
            from None
    if len(set(out)) != len(out):
        raise NoiseshiftError(f"--seeds must be distinct, got {text!r}")
    return out


def _candidates(only: str | None, table) -> tuple:
    """The baseline and the named candidates of ``table`` (all when None)."""
    if only is None:
        return table
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {c.name: c for c in table}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NoiseshiftError(f"--candidates: no candidate {', '.join(unknown)}; the table "
                              f"has {', '.join(known)}")
    base = table[0]
    return (base, *[known[n] for n in dict.fromkeys(names) if n != base.name])


def _run(model, budget, data, size, estimator, device, quiet, candidates, search):
    net = denoiser_with_progress(model, device, quiet)
    spec = data_spec(data, size) or (net.config or {}).get("data")
    if spec is None:
        raise NoiseshiftError("the model's checkpoint names no data: pass --data")
    dataset = load_data(spec)
    est = None
    if any(c.needs_estimator for c in candidates):
        with training_bar(quiet, "noise-level estimator (trained on first use only)") as bar:
            est = estimator_for(net, estimator, device=device, progress=bar,
                                data=data_spec(data, size))
    with _bar(quiet) as on_progress:
        return tune(net, budget, dataset, estimator=est, device=device,
                    progress=on_progress, candidates=candidates, **search)


@contextmanager
def _bar(quiet: bool):
    """The search's progress callback, drawn as a bar with the time left."""
    with progress(quiet) as p:
        task = p.add_task("tune", total=None)

        def on_progress(stage, done, total):
            p.update(task, description=stage, completed=done, total=total)

        yield on_progress


def _run_pipeline(model, budget, spec, estimator, scheduler, spacing, device, quiet,
                  candidates, search):
    """`tune` on the diffusers pipeline ``model`` ("diffusers:DIR"), scored on --data."""
    if spec is None:
        raise NoiseshiftError("tune on a diffusers pipeline needs --data: the data it was "
                              "trained on, which FD is measured against")
    pipe = load_for_tune(model, scheduler=scheduler, spacing=spacing, device=device)
    dataset = load_data(spec)
    est, ref = None, None
    if any(c.needs_estimator for c in candidates):
        with training_bar(quiet, "noise-level estimator (trained on first use only)") as bar:
            est, ref = pipeline_estimator(pipe, estimator, spec, dataset, device, bar)
    with _bar(quiet) as on_progress:
        return tune_pipeline(pipe, budget, dataset, source=model, estimator=est,
                             estimator_ref=ref, progress=on_progress, candidates=candidates,
                             **search)
