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
from ..io import open_trajectories
from ..io.paths import refuse_overwriting_inputs
from ..pretrained import get_estimator
from ..report.audit import decomposition_figure, decomposition_rich
from .common import app, console, fail, print_json
from .denoisers import denoiser_with_progress


@app.command("decompose")
def decompose_command(
    file: Path = typer.Argument(Path("trajectories.h5"), help="Trajectory file."),
    run: str = typer.Option("unguided", "--run", help="The (unguided) run to decompose."),
    model: str | None = typer.Option(None, "--model", "-m", help="The run's model checkpoint "
                                     "(default: the path the run records, else the built-in "
                                     "model)."),
    k: int = typer.Option(8, "--k", min=2, help="The reference runs at k x the steps."),
    estimator: str | None = typer.Option(None, "--estimator", "-e", help="The meter (default: "
                                         "oracle for mixture data, else learned)."),
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

    Example: `noiseshift sample --n 256`, then `noiseshift decompose --plot`.
    """
    try:
        refuse_overwriting_inputs(out if plot else None, file, model, estimator)
        r = open_trajectories(file).run(run)
        info = r.attrs.get("model") or {}
        path = model or _model_path(info, file)
        net = denoiser_with_progress(path, "cpu", json_out)
        spec = info.get("data") or (getattr(net, "config", {}) or {}).get("data")
        if spec is None:
            raise NoiseshiftError("the run's model names no data to read true states from",
                                  file)
        data = load_data(spec)
        name = estimator or ("oracle" if data.mixture is not None else "learned")
        meter = get_estimator(name, data, r.schedule, device="cpu")
        dec = decompose_run(net, r, meter, data, k=k, n_boot=bootstrap, seed=seed)
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
    if fig is not None:
        console.print(f"wrote [bold]{fig}[/]")


def _model_path(info, file) -> str | None:
    """The checkpoint the run records (None: the built-in default); a run that names none,
    or one that is gone, is refused rather than re-run with another model."""
    path = info.get("path") if isinstance(info, dict) else None
    if path == "default":
        return None
    if not path:
        raise NoiseshiftError("the run does not say which model made it; pass --model", file)
    if Path(path).is_dir():
        raise NoiseshiftError(f"the run was made by the pipeline folder {path}; decompose "
                              f"re-runs noiseshift checkpoints only", file)
    if not Path(path).is_file():
        raise NoiseshiftError(f"the run's model {path} is not a checkpoint file here; pass "
                              f"--model", file)
    return str(path)
