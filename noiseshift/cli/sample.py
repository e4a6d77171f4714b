"""`noiseshift sample`: draw samples and record every step to an HDF5 trajectory file."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..errors import NoiseshiftError
from ..defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..io.images import save_grid
from .common import app, console, err_console, print_json, progress

DEFAULT_RECORD = "trajectories.h5"


def load_denoiser(path: str | None, device: str = "auto", quiet: bool = False):
    """The model at ``path``, or the built-in default (trained and cached on first use,
    with a progress bar)."""
    from ..pretrained import default_model_path, load_or_default

    if path is not None or default_model_path().exists():
        return load_or_default(path, device=device)
    with progress(quiet) as p:
        task = p.add_task("training the default model (first use only)", total=None)

        def on_step(info):
            p.update(task, completed=info["step"], total=info["steps"])

        return load_or_default(None, device=device, progress=on_step)


def guided_model(model, **options):
    """The model to sample and the run's ``guidance`` dict.

    The hook where guidance plugs in: options from the command line go in, a wrapped model
    (or the model itself) and a JSON-able description come out. Unguided, the description
    is {"kind": "none"}. Guidance warnings print as one line each.
    """
    import warnings

    from ..guidance import GuidanceWarning, build_guidance

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GuidanceWarning)
        out = build_guidance(model, **options)
    for w in caught:
        if issubclass(w.category, GuidanceWarning):
            err_console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _numbers(text: str | None, option: str, counts=(2,)):
    """Comma-separated numbers (how many: one of ``counts``), or None."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise NoiseshiftError(f"{option} takes {want} comma-separated numbers, got {text!r}")
    return vals


def guidance_options(net, *, nag_scale: float, nag_mode: str, cfg_scale: float, eps_scale,
                     time_shift, interval, estimator, device: str, quiet: bool) -> dict:
    """`build_guidance` keywords from the command line's strings; loads the estimator that
    estimator-based NAG modes read (`--estimator`, else the built-in learned one)."""
    opts = dict(nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale,
                eps_scale=_numbers(eps_scale, "--eps-scale", (1, 2)),
                time_shift=_numbers(time_shift, "--time-shift"),
                interval=_numbers(interval, "--guidance-interval"))
    if nag_scale and nag_mode != "cf":
        from ..estimators import get_estimator

        with progress(quiet) as p:
            task = p.add_task("noise-level estimator (trained on first use only)", total=None)

            def on_step(info):
                p.update(task, completed=info.get("step"), total=info.get("steps"))

            opts["estimator"] = get_estimator(estimator or "learned", net.config.get("data"),
                                              net.schedule, device=device, progress=on_step)
    return opts


def find_baseline(path: Path, *, sampler: dict, seed: int, n: int, labels,
                  model_info: dict) -> str | None:
    """The name of a complete unguided run in ``path`` with the same model, sampler
    settings, seed, n and labels (the baseline a guided run is compared with), or None."""
    if not path.exists():
        return None
    import json

    import numpy as np

    from ..trajectories import open_trajectories

    same = json.loads(json.dumps(sampler)), json.loads(json.dumps(model_info))
    with open_trajectories(path) as f:
        for run in f:
            a = run.attrs
            if (run.complete and a["guidance"].get("kind", "none") == "none"
                    and (a["sampler"], a["model"]) == same and a["seed"] == seed and run.n == n
                    and (labels is None) == (run.labels is None)
                    and (labels is None or np.array_equal(run.labels, np.asarray(labels)))):
                return run.name
    return None


def baseline_name(path: Path, sampler: str, steps: int, seed: int, n: int) -> str:
    """'unguided', or a name with the settings when 'unguided' is taken by other settings."""
    return "unguided" if not run_exists(path, "unguided") else (
        f"unguided-{sampler}-{steps}-seed{seed}-n{n}")


def run_name_for(guidance: dict) -> str:
    return "unguided" if guidance.get("kind") == "none" else str(guidance.get("kind"))


def sampler_options(sampler: str, diffusion: float | None, eta: float | None) -> dict:
    kw = {}
    if diffusion is not None:
        if sampler != "euler-maruyama":
            raise NoiseshiftError("--diffusion applies to --sampler euler-maruyama only")
        kw["diffusion"] = diffusion
    if eta is not None:
        if sampler != "ddim":
            raise NoiseshiftError("--eta applies to --sampler ddim only")
        kw["eta"] = eta
    return kw


def run_exists(path: Path, run: str) -> bool:
    """Whether ``path`` already holds run ``run`` (False for a missing file)."""
    if not path.exists():
        return False
    from ..trajectories import open_trajectories

    with open_trajectories(path) as f:
        return run in f.runs


@app.command("sample")
def sample_command(
    model: str = typer.Option(None, "--model", "-m", help="Denoiser checkpoint from "
                              "`noiseshift train`; default: the built-in digits model "
                              "(trained on first use, then cached)."),
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help="euler, heun, "
                                "euler-maruyama or ddim."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=1, help="Sampling steps."),
    n: int = typer.Option(512, "--n", min=1, help="Number of samples."),
    seed: int = typer.Option(0, "--seed", help="Seed for labels, initial noise and "
                             "sampler noise: the same seed gives the same samples."),
    class_: int = typer.Option(None, "--class", help="Class label for every sample; "
                               "default: labels drawn from the seed."),
    nag_scale: float = typer.Option(0.0, "--nag-scale", help="Noise-level guidance (NAG) "
                                    "scale w; 0 = off."),
    nag_mode: str = typer.Option("estimator-noise", "--nag-mode", help="estimator-noise "
                                 "(default): w times the part of grad log p(t|x), from a "
                                 "noise-level estimator, along the predicted noise (any "
                                 "model); estimator: the whole gradient (edits content too); "
                                 "cf: "
                                 "classifier-free, (w+1) v(x|t) - w v(x|null t), as published "
                                 "(needs a model trained with --t-dropout); cf-read: the null-t "
                                 "branch read at the estimator's t'; cf-read-control: the "
                                 "conditional branch read there (no null-t branch)."),
    cfg_scale: float = typer.Option(0.0, "--cfg-scale", help="Classifier-free guidance on "
                                    "the class: v + w (v(x|c) - v(x|null c)); 0 = off."),
    eps_scale: str = typer.Option(None, "--eps-scale", help="Epsilon scaling (Ning et al.): "
                                  "divide predicted eps by B, or by K t + B given as B,K."),
    time_shift: str = typer.Option(None, "--time-shift", metavar="WINDOW,CUTOFF",
                                   help="Time-shift sampler (Li et al.): above t = CUTOFF, "
                                   "feed the model the t within +-WINDOW/2 whose marginal "
                                   "variance matches the state's."),
    guidance_interval: str = typer.Option(None, "--guidance-interval", metavar="LO,HI",
                                          help="Apply guidance only for t in [LO, HI]; "
                                          "default: NAG 0,0.8, CFG and eps scaling "
                                          "everywhere."),
    estimator: str = typer.Option(None, "--estimator", help="Noise-level estimator for the "
                                  "estimator-based NAG modes: a checkpoint or a name "
                                  "(learned, oracle, ...); default: the built-in one."),
    diffusion: float = typer.Option(None, "--diffusion", min=0.0, help="Euler-Maruyama: "
                                    "g(t)^2 = DIFFUSION * sigma(t) (default 2, i.e. 2t "
                                    "under the linear schedule)."),
    eta: float = typer.Option(None, "--eta", min=0.0, help="DDIM: 0 deterministic (default),"
                              " 1 ancestral."),
    record: Path = typer.Option(None, "--record", help=f"Trajectory file (HDF5 format v1) "
                                f"to record every step to; default: {DEFAULT_RECORD}."),
    run: str = typer.Option(None, "--run", help="Run name inside the file; default: named "
                            "after the settings ('unguided' without guidance). A run of "
                            "the same name is overwritten."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not record."),
    grid: Path = typer.Option(None, "--grid", help="Save a PNG grid of (up to 64) samples "
                              "(image data only)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Sample from a denoiser and **record the trajectory**: every state x_t the sampler
    visits, the model's x0 prediction there, the nominal t, labels and final samples.

    The recording goes to --record (default trajectories.h5 in the current folder) as run
    --run, ready for `noiseshift estimate` and `noiseshift report`. Several runs (say a
    baseline and a guided one with the same seed) live side by side in one file.

    Example: `noiseshift sample --sampler euler-maruyama --steps 32 --record traj.h5`.
    """
    from ..sampling import chain, sample, sample_and_record, sampler_settings

    sampler_kw = sampler_options(sampler, diffusion, eta)
    sampler_settings(sampler, steps, **sampler_kw)  # bad options fail before any work
    if grid is not None and grid.suffix.lower() != ".png":
        raise NoiseshiftError("--grid needs a .png file name", grid)
    net = load_denoiser(model, device, quiet=json_out)
    from ..sampling import draw_labels

    labels = draw_labels(net.num_classes, n, seed, class_)  # a bad --class fails early
    guided, guidance = guided_model(net, **guidance_options(
        net, nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale, eps_scale=eps_scale,
        time_shift=time_shift, interval=guidance_interval, estimator=estimator,
        device=device, quiet=json_out))
    path = None if no_record else Path(record or DEFAULT_RECORD)
    name = run or run_name_for(guidance)
    overwrote = path is not None and run_exists(path, name)
    if overwrote and not json_out:
        console.print(f"run [bold]{name}[/] exists in {path}; overwriting it")
    baseline = None
    if path is not None and guidance.get("kind") != "none":
        baseline = _record_baseline(net, model, path, name, sampler=sampler, steps=steps, n=n,
                                    seed=seed, class_=class_, sampler_kw=sampler_kw,
                                    quiet=json_out)
    t0 = time.perf_counter()
    with progress(json_out) as p:
        task = p.add_task(f"{sampler}, {steps} steps, n={n}", total=steps)

        def advance(info):
            p.update(task, completed=info["i"] + 1)

        common = dict(sampler=sampler, steps=steps, seed=seed, y=class_, device="auto",
                      **sampler_kw)
        if path is None:
            samples = sample(guided, n, callback=chain(advance), **common)
        else:
            samples = sample_and_record(guided, path, name, n, callback=advance,
                                        guidance=guidance, model_info=_model_info(net, model),
                                        **common)
    seconds = time.perf_counter() - t0
    samples = samples.float().cpu()
    if grid is not None:
        if samples.ndim != 4:
            raise NoiseshiftError(f"--grid needs image data; samples have shape "
                                  f"{tuple(samples.shape[1:])}")
        save_grid(samples[:64], grid, labels=None if labels is None else labels[:64])
    summary = {
        "model": model or "default", "sampler": sampler_settings(sampler, steps, **sampler_kw),
        "guidance": guidance, "n": n, "shape": list(samples.shape[1:]), "seed": seed,
        "seconds": round(seconds, 3), "record": None if path is None else str(path),
        "run": None if path is None else name, "overwrote": overwrote, "baseline": baseline,
        "grid": None if grid is None else str(grid),
        "sample_mean": float(samples.mean()), "sample_std": float(samples.std()),
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title="Samples", show_header=False)
    for k, v in [
        ("model", summary["model"]), ("sampler", f"{sampler}, {steps} steps"),
        ("samples", f"{n} x {summary['shape']}, seed {seed}"),
        ("mean / std", f"{summary['sample_mean']:.3f} / {summary['sample_std']:.3f}"),
        ("time", f"{seconds:.1f} s"),
        ("recorded to", "-" if path is None else f"{path} (run {name})"),
        ("baseline run", baseline or "-"),
        ("grid", summary["grid"] or "-"),
    ]:
        table.add_row(k, str(v))
    console.print(table)


def _record_baseline(net, model, path: Path, name: str, *, sampler, steps, n, seed, class_,
                     sampler_kw, quiet) -> str:
    """Make sure ``path`` holds the unguided run a guided run is compared with; record one
    (same model, sampler, steps, seed, n, labels) when it does not. Returns its name."""
    from ..sampling import draw_labels, sample_and_record, sampler_settings

    info = _model_info(net, model)
    settings = sampler_settings(sampler, steps, **sampler_kw)
    labels = draw_labels(net.num_classes, n, seed, class_)
    found = find_baseline(path, sampler=settings, seed=seed, n=n, labels=labels,
                          model_info=info)
    if found is not None:
        return found
    base = baseline_name(path, sampler, steps, seed, n)
    if base == name:
        raise NoiseshiftError(f"--run {name} is the name the unguided baseline needs; "
                              f"choose another")
    if not quiet:
        console.print(f"no unguided run with these settings in {path}; recording one first "
                      f"as [bold]{base}[/]")
    with progress(quiet) as p:
        task = p.add_task(f"baseline: {sampler}, {steps} steps, n={n}", total=steps)
        sample_and_record(net, path, base, n, sampler=sampler, steps=steps, seed=seed,
                          y=class_, guidance={"kind": "none"}, model_info=info,
                          callback=lambda i: p.update(task, completed=i["i"] + 1),
                          **sampler_kw)
    return base


def _model_info(net, path: str | None) -> dict:
    from ..models import describe

    return {**describe(net), "path": path or "default"}
