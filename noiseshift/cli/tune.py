"""`noiseshift tune`: at a budget of model evaluations per sample, which correction to use.
The search is `tuning.tune`; this module parses the options and prints."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import tiny
from ..data import load_data
from ..defaults import N_BOOT
from ..errors import NoiseshiftError
from ..integrations.pipeline_runs import is_diffusers
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
                              "`noiseshift train`; default: the built-in digits model."),
    budget: int = typer.Option(16, "--budget", min=1, help="Model evaluations per sample "
                               "every candidate may spend (Heun's step costs 2)."),
    n_final: int = typer.Option(None, "--n-final", min=8, help="Samples per seed of the "
                                "finalists and the baseline (default 1024; rounded up to "
                                "whole blocks of --n-start, at most 128)."),
    n_start: int = typer.Option(None, "--n-start", min=8, help="Samples per seed every "
                                "candidate starts with (default 64)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma list of seeds; every candidate "
                              "draws the same samples of each."),
    only: str = typer.Option(None, "--candidates", help="Comma list of candidate names to "
                             "search (default all; the baseline is always in)."),
    data: str = data_option(None, "Default: the data the model's checkpoint names."),
    size: int = size_option(),
    estimator: str = typer.Option(None, "--estimator", help="Noise-level estimator the NAG "
                                  "candidates read (checkpoint or name; default learned)."),
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
    then the candidate with the lowest estimated FD at --n-final (through the paired
    difference from one drawn there) is drawn there, while its estimate beats the best FD
    there and a quarter of the full grid's model evaluations is not spent. Same seeds for
    every candidate, so each FD change is paired. FD is in the feature space `report`
    uses; the shift is read by a meter no candidate is guided by (the subspace oracle on
    digits). Prints the table, the recommended command line and its Python lines.

    Example: `noiseshift tune --budget 16 --plot tune.png`.
    """
    # NOISESHIFT_TINY (tests, the README's CI run) shrinks the search with the models
    n_final = n_final or tiny.sized("n", 1024)
    n_start = n_start or min(64, max(8, n_final // 4))
    try:
        seed_list = _seeds(seeds)
        if plot is not None:
            check_output_file(plot, "--plot")
            refuse_overwriting_inputs(plot, model, data)
        res = _run(model, budget, n_start, n_final, seed_list, data, size, estimator,
                   bootstrap, device, json_out, _candidates(only))
        fig = tune_figure(res, plot) if plot is not None else None
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        print_json({**res.to_dict(), "command": res.command(model),
                    "figure": fig and str(fig)})
        return
    console.print(tune_table(res))
    for note in res.notes:
        console.print(f"[dim]left out: {note}[/]", highlight=False)
    console.print(verdict(res), highlight=False)
    console.print(f"\n[bold]Recommended:[/] {res.command(model)}", highlight=False,
                  soft_wrap=True)
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


def _candidates(only: str | None) -> tuple:
    """The baseline and the named candidates (all when None)."""
    if only is None:
        return CANDIDATES
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {c.name: c for c in CANDIDATES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NoiseshiftError(f"--candidates: no candidate {', '.join(unknown)}; the table "
                              f"has {', '.join(known)}")
    base = CANDIDATES[0]
    return (base, *[known[n] for n in dict.fromkeys(names) if n != base.name])


def _run(model, budget, n_start, n_final, seeds, data, size, estimator, bootstrap, device,
         quiet, candidates):
    if is_diffusers(model):
        raise NoiseshiftError("tune searches built-in samplers; diffusers pipelines are not "
                              "supported yet (use `noiseshift audit --scheduler`)")
    if n_start > n_final:
        raise NoiseshiftError(f"--n-start ({n_start}) is larger than --n-final ({n_final})")
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
    with progress(quiet) as p:
        task = p.add_task("tune", total=None)

        def on_progress(stage, done, total):
            p.update(task, description=stage, completed=done, total=total)

        return tune(net, budget, dataset, seeds=seeds, estimator=est, n_start=n_start,
                    n_final=n_final, n_boot=bootstrap, device=device, progress=on_progress,
                    candidates=candidates)
