"""`noiseshift retime`: a shift-aware time grid for a sampler, from a perfect model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..analysis.audit import default_mixture, fit_mixture
from ..analysis.retime import regrid_from_estimates, retime_builtin
from ..data import load_data
from ..defaults import DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_SCHEDULE, DEFAULT_STEPS
from ..errors import NoiseshiftError
from ..integrations.retime_diffusers import relabel_scheduler, retime_scheduler
from ..io.atomic import atomic_path
from ..io.paths import refuse_overwriting_inputs
from .common import app, console, print_json


@app.command("retime")
def retime_command(
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help="Built-in sampler."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=1, help="Steps of the grid."),
    schedule: str = typer.Option(DEFAULT_SCHEDULE, "--schedule", help="Built-in samplers' "
                                 "schedule."),
    scheduler: str = typer.Option(None, "--scheduler", help="A diffusers scheduler instead: "
                                  "VP, e.g. diffusers:DDIMScheduler (run as first-order "
                                  "DPM-Solver++, which takes custom timesteps), or flow "
                                  "matching, diffusers:FlowMatchEulerDiscreteScheduler (its "
                                  "sigmas, shift included)."),
    spacing: str = typer.Option(None, "--spacing", help="diffusers: the starting grid's "
                                "timestep_spacing (leading, linspace, trailing)."),
    scheduler_config: str = typer.Option(None, "--scheduler-config", help="diffusers: JSON "
                                         "config keys, e.g. '{\"shift\": 3.0}'."),
    data: str = typer.Option(None, "--data", help="Match the perfect model to your data "
                             "(as `audit --data`); default: the built-in 64-d mixture."),
    components: int = typer.Option(8, "--components", min=1, help="Modes fitted with --data."),
    rank: int = typer.Option(8, "--rank", min=1, help="PCA directions k-means sees (--data)."),
    n: int = typer.Option(DEFAULT_N, "--n", min=8, help="Samples per iterate."),
    seed: int = typer.Option(0, "--seed"),
    iterations: int = typer.Option(3, "--iterations", min=0, help="Moves of the grid."),
    damping: float = typer.Option(1.0, "--damping", min=0.0, help="Share of each state's "
                                  "shift each move applies."),
    relabel: bool = typer.Option(False, "--relabel", help="With --scheduler (VP): keep the "
                                 "scheduler's grid and hand the network, at each step, the t "
                                 "its state reads at (a static relabel); writes the grid's "
                                 "timesteps and the network's (\"relabel\")."),
    resolved: bool = typer.Option(None, "--resolved/--every-point", help="Move a point only "
                                  "while its state's shift CI excludes 0 (default: on with "
                                  "--relabel, off otherwise)."),
    estimates: Path = typer.Option(None, "--estimates", help="Instead of a perfect model: "
                                   "one move from a recorded run's readings (an estimates "
                                   "file from `noiseshift estimate`; every step recorded)."),
    run: str = typer.Option("unguided", "--run", help="With --estimates: the run."),
    estimator: str = typer.Option(None, "--estimator", help="With --estimates: whose "
                                  "readings (default: the first)."),
    out: Path = typer.Option(Path("grid.json"), "--out", "-o", help="The grid file (JSON) "
                             "that `sample --timesteps` reads."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
):
    """Place a sampler's steps so that each state reads at the level it is labelled.

    With a perfect model matched to the data (as `audit`), the states of a few-step sampler
    land off schedule: the one meant for t reads as t + delta. retime moves each grid point
    to where its state reads, reruns, and repeats (--iterations), keeping the grid with the
    smallest mean |shift|. It writes --out: "timesteps" for the built-in samplers
    (`noiseshift sample --timesteps grid.json`) and, with --scheduler, "diffusers": integer
    "timesteps" (DDPM-style schedulers, DPM-Solver) and "sigmas" (Euler's VE sigmas; for a
    flow-matching scheduler its flow sigmas only), which `sample --model diffusers:DIR
    --timesteps grid.json` hands to the pipeline's scheduler, whichever it takes.

    With --relabel the scheduler's grid stays and the labels move instead: the network is
    handed, at each step, the t its state reads at (a static relabel; the states are then
    read against those labels).

    Examples: `noiseshift retime --steps 16`;
    `noiseshift retime --scheduler diffusers:DDIMScheduler --spacing trailing --steps 10`;
    `noiseshift retime --data digits --scheduler diffusers:DDIMScheduler --spacing trailing
    --steps 10 --relabel --n 1000 --iterations 6`.
    """
    refuse_overwriting_inputs([out], data, estimates)
    if estimates is not None:
        body = regrid_from_estimates(estimates, run, estimator, damping)
        _write(out, body)
        if json_out:
            print_json({**body, "out": str(out)})
            return
        console.print(f"grid written to {out}: " + ", ".join(f"{v:.3f}" for v in
                                                            body["timesteps"]), soft_wrap=True)
        return
    mix = default_mixture() if data is None else fit_mixture(load_data(data), components,
                                                             rank, seed)
    opts = dict(steps=steps, n=n, seed=seed, iterations=iterations, damping=damping,
                resolved=bool(relabel if resolved is None else resolved))
    if relabel and scheduler is None:
        raise NoiseshiftError("--relabel applies to --scheduler diffusers:... only")
    if scheduler is not None:
        run = relabel_scheduler if relabel else retime_scheduler
        res = run(mix, scheduler, spacing=spacing, config=scheduler_config, **opts)
    else:
        res = retime_builtin(mix, schedule, sampler=sampler, **opts)
    body = res.to_dict()
    _write(out, body)
    if json_out:
        print_json({**body, "out": str(out)})
        return
    _print(res, body, out)


def _write(out: Path, body: dict) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(body, indent=1) + "\n")


def _print(res, body: dict, out: Path) -> None:
    table = Table(title="mean |shift| by the exact meter, per iterate")
    for col in ("iterate", "mean |shift| [95% CI]",
                "labels (t)" if res.meta.get("relabel") else "grid"):
        table.add_column(col)
    for k, (g, a) in enumerate(zip(res.grids, res.audits, strict=True)):
        m = a.mean_abs
        mark = " (chosen)" if k == res.best else ""
        table.add_row(f"{k}{mark}", f"{m.value:.4f} [{m.lo:.4f}, {m.hi:.4f}]",
                      ", ".join(f"{v:.3f}" for v in g))
    console.print(table)
    console.print(f"grid written to {out}", soft_wrap=True)
    dd = body.get("diffusers")
    if dd is None:
        console.print(f"use it: noiseshift sample --timesteps {out}   (Python: "
                      f"sampling.sample(model, n, timesteps=json.load(open('{out}'))"
                      f"['timesteps']))", soft_wrap=True, highlight=False)
        return
    if "relabel" in dd:
        console.print(f"diffusers: noiseshift sample --model diffusers:DIR --timesteps {out} "
                      f"(the grid {dd['timesteps']}; the network gets "
                      f"{[round(v, 1) for v in dd['relabel']]})", soft_wrap=True,
                      highlight=False)
        return
    sig = [round(s, 4) for s in dd["sigmas"]]
    if dd.get("sigmas_kind") == "flow":  # the pipeline shifts what it is handed
        call = (f"pipe(...) inside noiseshift.integrations.retime_diffusers.custom_grid("
                f"pipe.scheduler, sigmas={sig})")
    else:
        call = (f"pipe.scheduler = {body['scheduler']}.from_config(pipe.scheduler.config, "
                f"**{body['config']}); then pipe(..., timesteps={dd['timesteps']}) where the "
                f"pipeline takes timesteps (or sigmas={sig} with EulerDiscreteScheduler)")
    console.print(f"diffusers: {call}; or noiseshift sample --model diffusers:DIR "
                  f"--timesteps {out}", soft_wrap=True, highlight=False)
