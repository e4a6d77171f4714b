"""`noiseshift decompose`: split a recorded run's shift into the sampler's and the network's
parts.

A command of its own, not `report --decompose`: the report only reads files, while this
re-runs the model (the run from its seed, then at k times the steps), which takes the model,
minutes and a device; its input is one run, not an estimates file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..analysis.decompose import decompose_run
from ..data import load_data
from ..defaults import N_BOOT
from ..errors import NoiseshiftError
from ..integrations.pipeline_decompose import decompose_pipeline_run
from ..integrations.pipeline_runs import PREFIX
from ..io import open_trajectories
from ..io.paths import refuse_overwriting_inputs
from ..pretrained import NAMES, get_estimator
from ..report.audit import decomposition_figure, decomposition_rich
from .common import app, console, fail, print_json
from .denoisers import denoiser_with_progress


@app.command("decompose")
def decompose_command(
    file: Path = typer.Argument(Path("trajectories.h5"), help="Trajectory file."),
    run: str = typer.Option("unguided", "--run", help="The (unguided) run to decompose."),
    model: str | None = typer.Option(None, "--model", "-m", help="The run's model checkpoint "
                                     "(default: the path the run records, else the built-in "
                                     "model); for a pipeline run, diffusers:DIR, a moved copy "
                                     "of its folder."),
    k: int = typer.Option(8, "--k", min=2, help="The reference runs at k x the steps."),
    estimator: str | None = typer.Option(None, "--estimator", "-e", help="The meter (default: "
                                         "oracle for mixture data, else learned); a pipeline "
                                         "run needs est.pt, trained for its states."),
    bootstrap: int = typer.Option(N_BOOT, "--bootstrap", min=20, help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bridge and the true states."),
    per_step: bool = typer.Option(False, "--per-step", help="Print the per-step table too."),
    plot: bool = typer.Option(False, "--plot", help="Draw total, sampler and network parts."),
    out: Path = typer.Option(Path("decompose.png"), "--out", "-o", help="The figure's path."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
):
    """Split a run's noise shift into the sampler's part and the network's part.

    The run is re-generated from its seed with its model and sampler (checked bit for bit
    against the file), then re-run with the same network at k x the steps from the same
    initial noise (Euler-Maruyama: on the same Brownian path, the recorded run's increments
    bridged to the fine grid). One meter reads all: sampler part = run - fine run (paired per
    sample), network part = fine run - true x_t at the same t, total = their sum. Per step and
    per band of t with 95% bootstrap CIs, and a sentence saying which part dominates where.

    A run of a diffusers pipeline (`sample --model diffusers:DIR`) is re-drawn from its
    recorded folder (refused if its files changed), scheduler config and seed, then drawn at
    k x the steps from the same initial latents: paired per sample for deterministic
    schedulers, compared by distribution per step for stochastic ones (DDPM, ancestral,
    SDE); the order for the extrapolation comes from the scheduler.

    Example: `noiseshift sample --n 256`, then `noiseshift decompose --plot`.
    """
    try:
        refuse_overwriting_inputs(out if plot else None, file, model, estimator)
        r = open_trajectories(file).run(run)
        info = r.attrs.get("model") or {}
        if info.get("library") == "diffusers":
            dec, name = _decompose_pipeline(r, model, estimator, k, bootstrap, seed)
        else:
            dec, name = _decompose_builtin(r, info, file, model, estimator, json_out,
                                           k=k, n_boot=bootstrap, seed=seed)
        fig = decomposition_figure(dec, out) if plot else None
    except NoiseshiftError as e:
        fail(e.problem, e.path)
    if json_out:
        print_json({**dec.to_dict(), "estimator": name, "figure": fig and str(fig)})
        return
    if per_step:
        console.print(decomposition_rich(dec, "steps"))
    console.print(decomposition_rich(dec, "bands"))
    console.print(dec.sentence, highlight=False)
    console.print(f"pairing: {dec.pairing}; fine states read at the nearest step (max |t gap| "
                  f"{dec.t_gap:.3g}); re-drawn run max |diff| {dec.reproduced:.3g}",
                  highlight=False)
    if fig is not None:
        console.print(f"wrote [bold]{fig}[/]")


def _decompose_builtin(r, info, file, model, estimator, json_out, **kw):
    net = denoiser_with_progress(model or _model_path(info, file), "cpu", json_out)
    spec = info.get("data") or (getattr(net, "config", {}) or {}).get("data")
    if spec is None:
        raise NoiseshiftError("the run's model names no data to read true states from", file)
    data = load_data(spec)
    name = estimator or ("oracle" if data.mixture is not None else "learned")
    meter = get_estimator(name, data, r.schedule, device="cpu")
    return decompose_run(net, r, meter, data, **kw), name


def _decompose_pipeline(r, model, estimator, k, n_boot, seed):
    """A diffusers pipeline run: the meter is a checkpoint trained for the run's schedule and
    shape (as for `estimate`), the true states come from the data the run or the estimator
    names, and the pipeline is the recorded folder or `--model diffusers:DIR`."""
    if estimator is None or estimator in NAMES:
        raise NoiseshiftError(f"a diffusers pipeline run is read by an estimator trained for "
                              f"its states: pass -e est.pt (noiseshift train-estimator "
                              f"--schedule {r.schedule.to_dict()['name']}), not "
                              f"{estimator or 'a named one'}", r.path)
    if model is not None and not model.startswith(PREFIX):
        raise NoiseshiftError(f"the run was drawn by a diffusers pipeline: --model takes "
                              f"{PREFIX}DIR for it", r.path)
    meter = get_estimator(estimator, device="cpu")
    spec = (r.attrs.get("model") or {}).get("data") or getattr(meter, "data_spec_", None)
    if spec is None:
        raise NoiseshiftError("neither the run nor the estimator names the data to draw true "
                              "states from", r.path)
    folder = model[len(PREFIX):] if model else None
    return decompose_pipeline_run(r, meter, load_data(spec), folder=folder, k=k,
                                  n_boot=n_boot, seed=seed), estimator


def _model_path(info, file) -> str | None:
    """The checkpoint the run records (None: the built-in default); a run that names none,
    or one that is gone, is refused rather than re-run with another model."""
    path = info.get("path") if isinstance(info, dict) else None
    if path == "default":
        return None
    if not path:
        raise NoiseshiftError("the run does not say which model made it; pass --model", file)
    if not Path(path).is_file():
        raise NoiseshiftError(f"the run's model {path} is not a checkpoint file here; pass "
                              f"--model", file)
    return str(path)
