"""`noiseshift audit`: the noise shift a sampler causes on its own, with a perfect model."""

from __future__ import annotations

from pathlib import Path

import typer

from ..analysis.audit import audit_builtin, convergence, default_mixture, fit_mixture
from ..analysis.simulation import exact_meter
from ..data import load_data
from ..defaults import DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_SCHEDULE, DEFAULT_STEPS, N_BOOT
from ..errors import NoiseshiftError
from ..integrations.audit_diffusers import audit_scheduler
from ..integrations.scheduler_matrix import audit_matrix
from ..io.paths import refuse_overwriting_inputs
from ..report.audit import audit_figure, audit_table, band_rich, convergence_rich
from ..report.matrix import flag_lines, matrix_figure, matrix_rich
from .common import app, console, fail, print_json, progress


@app.command("audit")
def audit_command(
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help="Built-in sampler: euler, "
                                "heun, euler-maruyama, ddim."),
    steps: str | None = typer.Option(None, "--steps", help="Steps, or a comma list "
                                     "(8,16,32,64) for the convergence table and fitted "
                                     f"order (default {DEFAULT_STEPS}; the matrix: 10,15,30)."),
    schedule: str = typer.Option(DEFAULT_SCHEDULE, "--schedule", help="Built-in samplers' "
                                 "schedule."),
    diffusion: float | None = typer.Option(None, "--diffusion", help="Euler-Maruyama's g^2 "
                                           "factor (default 2)."),
    eta: float | None = typer.Option(None, "--eta", help="DDIM's eta (default 0)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="A diffusers scheduler "
                                         "instead: diffusers:CLASS, e.g. "
                                         "diffusers:DDIMScheduler (needs the diffusers extra)."),
    spacing: str | None = typer.Option(None, "--spacing", help="diffusers timestep_spacing: "
                                       "leading, linspace or trailing."),
    scheduler_config: str | None = typer.Option(None, "--scheduler-config", help="JSON with "
                                                "the rest of the scheduler's config."),
    data: str | None = typer.Option(None, "--data", help="Match the perfect model to your "
                                    "data (.npy/.npz/.h5): see below. Default: the built-in "
                                    "64-d, 8-mode mixture."),
    components: int = typer.Option(8, "--components", min=1, help="Modes fitted with --data."),
    rank: int = typer.Option(8, "--rank", min=1, help="PCA directions k-means sees (--data)."),
    n: int = typer.Option(DEFAULT_N, "--n", min=8, help="Samples per run."),
    seed: int = typer.Option(0, "--seed"),
    bootstrap: int = typer.Option(N_BOOT, "--bootstrap", min=20, help="Bootstrap resamples."),
    plot: bool = typer.Option(False, "--plot", help="Draw the shift per step (PNG at --out)."),
    out: Path = typer.Option(Path("audit.png"), "--out", "-o", help="The figure's path."),
    per_step: bool = typer.Option(False, "--per-step", help="Print the per-step table too."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    matrix: bool = typer.Option(False, "--diffusers-matrix", help="Audit every diffusers "
                                "scheduler noiseshift can read x spacings x configurations "
                                "at each --steps, and flag those off schedule (see "
                                "docs/scheduler-lint.md)."),
    schedulers: str | None = typer.Option(None, "--schedulers", help="Matrix: a comma list "
                                          "of classes (default: all supported)."),
    spacings: str = typer.Option("leading,linspace,trailing", "--spacings",
                                 help="Matrix: the timestep_spacing values."),
    configs: str = typer.Option("all", "--configs", help="Matrix: 'default' (as shipped) or "
                                "'all' (with v/x0 prediction, SD betas, zero terminal SNR, "
                                "Karras sigmas, final sigma_min, flow shift 3)."),
):
    """Run a sampler with a perfect model and report the noise shift it causes alone.

    The model is the exact denoiser of a Gaussian mixture, so any shift is the sampler's
    (its discretisation, time grid and labels). The meter is the mixture's exact posterior
    p(t | x), calibrated; each step's zero point is that meter's reading of fresh true x_t at
    the same t. Reports the shift per step and by band of t with 95% bootstrap CIs, a one-line
    verdict, and with several --steps the convergence of mean |shift| and its fitted order.

    --data fits the perfect model to your data: same dimension and per-dimension second
    moment; modes from k-means (--components) in the top --rank PCA directions; one isotropic
    spread per mode. It keeps your data's energy and coarse mode structure, not within-mode
    correlations or texture, so it audits the sampler on data like yours, not on your data.

    --diffusers-matrix runs every diffusers scheduler noiseshift can read, at each spacing
    and configuration that matters, and flags those off schedule (docs/scheduler-lint.md).

    Examples: `noiseshift audit --steps 8,16,32,64`;
    `noiseshift audit --scheduler diffusers:DDIMScheduler --spacing trailing --steps 10`;
    `noiseshift audit --diffusers-matrix --schedulers DDIMScheduler --steps 5,10 --n 64`.
    """
    if matrix:
        refuse_overwriting_inputs(out if plot else None, data)
        _matrix(schedulers, spacings, configs, steps, data, components, rank, n, seed,
                bootstrap, plot and out, json_out)
        return
    try:
        refuse_overwriting_inputs(out if plot else None, data)
        results = _run(sampler, steps or str(DEFAULT_STEPS), schedule, diffusion, eta,
                       scheduler, spacing, scheduler_config, data, components, rank, n, seed,
                       bootstrap)
        conv = convergence(results) if len(results) > 1 else None
        fig = audit_figure(results, out) if plot else None
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        print_json({"audits": [r.to_dict() for r in results], "figure": fig and str(fig),
                    "convergence": None if conv is None else
                    {"table": conv[0].to_dict("records"), "order": conv[1]}})
        return
    _print(results, conv, per_step, fig)


def _step_counts(steps: str) -> list[int]:
    try:
        counts = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise NoiseshiftError(f"--steps must be integers, got {steps!r}") from None
    if not counts or min(counts) < 1:
        raise NoiseshiftError(f"--steps must be positive integers (8 or 8,16,32), got "
                              f"{steps!r}")
    return counts


def _refuse_unused(scheduler, spacing, config, diffusion, eta) -> None:
    """Options of the other kind of audit are refused, not ignored."""
    mine, other = (("--diffusion", diffusion), ("--eta", eta)), (("--spacing", spacing),
                                                                 ("--scheduler-config", config))
    unused = [k for k, v in (mine if scheduler is not None else other) if v is not None]
    if unused:
        raise NoiseshiftError(f"{' and '.join(unused)} mean{'s' if len(unused) == 1 else ''} "
                              f"nothing "
                              + ("with --scheduler" if scheduler is not None else
                                 "without --scheduler diffusers:CLASS"))


def _mixture(data, components, rank, seed):
    return default_mixture() if data is None else fit_mixture(load_data(data), components,
                                                              rank, seed)


def _matrix(schedulers, spacings, configs, steps, data, components, rank, n, seed, bootstrap,
            figure, json_out) -> None:
    names = [s.strip().removeprefix("diffusers:") for s in (schedulers or "").split(",")
             if s.strip()] or None
    try:
        with progress(json_out) as p:
            task = p.add_task("auditing schedulers", total=None)
            res = audit_matrix(_mixture(data, components, rank, seed), schedulers=names,
                               spacings=[s.strip() for s in spacings.split(",") if s.strip()],
                               steps=_step_counts(steps or "10,15,30"), configs=configs, n=n,
                               seed=seed, n_boot=bootstrap, on_config=lambda done, total, _:
                               p.update(task, completed=done, total=total))
        fig = matrix_figure(res, figure) if figure and res.rows else None
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        print_json({**res.to_dict(), "figure": fig and str(fig)})
        return
    console.print(matrix_rich(res))
    for line in flag_lines(res):
        console.print(line, highlight=False, markup=False)
    if fig is not None:
        console.print(f"wrote [bold]{fig}[/]")


def _run(sampler, steps, schedule, diffusion, eta, scheduler, spacing, config, data,
         components, rank, n, seed, bootstrap):
    counts = _step_counts(steps)
    _refuse_unused(scheduler, spacing, config, diffusion, eta)
    mix = _mixture(data, components, rank, seed)
    if scheduler is not None:
        meters: dict = {}
        return [audit_scheduler(mix, scheduler, steps=s, spacing=spacing, config=config, n=n,
                                seed=seed, meters=meters, n_boot=bootstrap) for s in counts]
    kw = {k: v for k, v in (("diffusion", diffusion), ("eta", eta)) if v is not None}
    meter = exact_meter(mix, schedule)
    return [audit_builtin(mix, schedule, sampler=sampler, steps=s, n=n, seed=seed, meter=meter,
                          n_boot=bootstrap, **kw) for s in counts]


def _print(results, conv, per_step, fig) -> None:
    for res in results:
        if per_step:
            console.print(audit_table(res))
        console.print(band_rich(res))
    if conv is not None:
        console.print(convergence_rich(results[0].label.rsplit(" ", 2)[0], *conv))
    for res in results:
        console.print(res.verdict, highlight=False)
    if fig is not None:
        console.print(f"wrote [bold]{fig}[/]")
