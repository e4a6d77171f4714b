"""`noiseshift sample`: draw samples and record every step to an HDF5 trajectory file.

The recording, and the unguided baseline a guided run is recorded beside, are
`recording.record_with_baseline`; this module parses the options and prints.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import typer
from rich.table import Table

from ..defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..distributed import is_main
from ..errors import NoiseshiftError
from ..guidance import DEFAULT_NAG_MODE, NAG_MODES, GuidanceWarning, build_guidance
from ..integrations.pipeline_runs import (
    is_diffusers,
    refuse_diffusers_options,
    sample_pipeline_folder,
)
from ..io.images import save_grid
from ..pretrained import estimator_for
from ..recording import describe_model, record_with_baseline, run_exists, run_name
from ..sampling import draw_labels, sample_across_ranks, sampler_settings
from ..tiny import sized
from .common import (
    app,
    console,
    data_option,
    data_spec,
    denoiser_with_progress,
    err_console,
    print_json,
    progress,
    size_option,
    training_bar,
)

DEFAULT_RECORD = "trajectories.h5"
NAG_MODE_HELP = (
    f"One of {', '.join(NAG_MODES)}; default {DEFAULT_NAG_MODE}. estimator-step: a damped "
    "Newton step on a noise-level estimator's reading of the state, along the predicted "
    "noise (w / (1 + w) of the step that brings the reading back to that of true states; "
    "any model); estimator-noise: w times the part of grad log p(t|x), from the estimator, "
    "along the predicted noise; estimator: the whole gradient (edits content too); "
    "estimator-reading: the gradient of a Gaussian likelihood of the reading (capped); cf: "
    "classifier-free, (w+1) v(x|t) - w v(x|null t), as published (needs a model trained "
    "with --t-dropout); cf-read: the null-t branch read at the estimator's t'; "
    "cf-read-control: the conditional branch read there (no null-t branch); cf-calibrated "
    "(-control): the same at the calibrated reading, capped.")


def guided_model(model, **options):
    """The model to sample and the run's ``guidance`` dict (`guidance.build_guidance`), with
    each guidance warning printed as one line."""
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
                     time_shift, interval, estimator, device: str, quiet: bool,
                     data: dict | None = None) -> dict:
    """`build_guidance` keywords from the command line's strings; loads the estimator that
    estimator-based NAG modes read (`--estimator`, else the built-in learned one)."""
    opts = dict(nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale,
                eps_scale=_numbers(eps_scale, "--eps-scale", (1, 2)),
                time_shift=_numbers(time_shift, "--time-shift"),
                interval=_numbers(interval, "--guidance-interval"))
    if nag_scale and nag_mode != "cf":
        with training_bar(quiet, "noise-level estimator (trained on first use only)") as bar:
            opts["estimator"] = estimator_for(net, estimator, device=device, progress=bar,
                                              data=data)
    return opts


def sampler_options(sampler: str, diffusion: float | None, eta: float | None) -> dict:
    """The sampler's keywords from --diffusion and --eta, each only for its sampler."""
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


@app.command("sample")
def sample_command(
    model: str = typer.Option(None, "--model", "-m", help="Denoiser checkpoint from "
                              "`noiseshift train`, or diffusers:DIR (a saved diffusers "
                              "pipeline folder, local files only); default: the built-in "
                              "digits model (trained on first use, then cached)."),
    scheduler: str = typer.Option(None, "--scheduler", help="diffusers:DIR only: replace "
                                  "the pipeline's scheduler (same config): ddpm, ddim, euler, "
                                  "dpm++ or flow-euler."),
    spacing: str = typer.Option(None, "--spacing", help="diffusers:DIR only: timestep "
                                "spacing, leading, linspace or trailing."),
    prompt: str = typer.Option(None, "--prompt", help="diffusers:DIR only: the prompt of a "
                               "text-to-image pipeline."),
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help="euler, heun, "
                                "euler-maruyama or ddim."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=1, help="Sampling steps."),
    n: int = typer.Option(sized("n", 512), "--n", "-n", min=1, help="Number of samples (under "
                          "torchrun write -n, or put -- before the command)."),
    seed: int = typer.Option(0, "--seed", help="Seed for labels, initial noise and "
                             "sampler noise: the same seed gives the same samples."),
    class_: int = typer.Option(None, "--class", help="Class label for every sample; "
                               "default: labels drawn from the seed."),
    nag_scale: float = typer.Option(0.0, "--nag-scale", help="Noise-level guidance (NAG) "
                                    "scale w; 0 = off."),
    nag_mode: str = typer.Option(DEFAULT_NAG_MODE, "--nag-mode", help=NAG_MODE_HELP),
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
                                          "default: NAG 0,1 for estimator-step, "
                                          "estimator-reading and cf-calibrated(-control), "
                                          "0,0.8 for the other modes; CFG and eps scaling "
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
    data: str = data_option(None, "Default: the data the model's checkpoint names. Used "
                            "by the estimator-based NAG modes and stored in the run."),
    size: int = size_option(),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or "
                               "cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    record_n: int = typer.Option(None, "--record-n", min=1, help="Record only the first "
                                 "RECORD_N samples' states (all --n are still drawn and "
                                 "saved, as all_samples); keeps FID-scale runs on a disk."),
    record_every: int = typer.Option(1, "--record-every", min=1, help="Record every K-th "
                                     "step only (steps 0, K, 2K, ...)."),
):
    """Sample from a denoiser and **record the trajectory**: every state x_t the sampler
    visits, the model's x0 prediction there, the nominal t, labels and final samples.

    The recording goes to --record (default trajectories.h5 in the current folder) as run
    --run, ready for `noiseshift estimate` and `noiseshift report`. Several runs (say a
    baseline and a guided one with the same seed) live side by side in one file.

    Example: `noiseshift sample --sampler euler-maruyama --steps 32 --record traj.h5`.
    """
    if is_diffusers(model):
        summary, path, name = sample_pipeline_folder(
            model, scheduler=scheduler, spacing=spacing, prompt=prompt, class_=class_,
            steps=steps, n=n, seed=seed, nag_scale=nag_scale, nag_mode=nag_mode,
            cfg_scale=cfg_scale, eps_scale=_numbers(eps_scale, "--eps-scale", (1, 2)),
            interval=_numbers(guidance_interval, "--guidance-interval"), estimator=estimator,
            path=None if no_record else Path(record or DEFAULT_RECORD), run=run, grid=grid,
            device=device, quiet=json_out, sampler=sampler, diffusion=diffusion, eta=eta,
            time_shift=time_shift, max_samples=record_n, every=record_every,
            progress=err_console.is_terminal, say=console.print)
        return print_json(summary) if json_out else _print_summary(summary, path, name)
    refuse_diffusers_options(scheduler=scheduler, spacing=spacing, prompt=prompt)
    sampler_kw = sampler_options(sampler, diffusion, eta)
    sampler_settings(sampler, steps, **sampler_kw)  # bad options fail before any work
    if grid is not None and grid.suffix.lower() != ".png":
        raise NoiseshiftError("--grid needs a .png file name", grid)
    net = denoiser_with_progress(model, device, quiet=json_out)
    labels = draw_labels(net.num_classes, n, seed, class_)  # a bad --class fails early
    guided, guidance = guided_model(net, **guidance_options(
        net, nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale, eps_scale=eps_scale,
        time_shift=time_shift, interval=guidance_interval, estimator=estimator,
        device=device, quiet=json_out, data=data_spec(data, size)))
    path = None if no_record else Path(record or DEFAULT_RECORD)
    name = run or run_name(guidance)
    overwrote = path is not None and run_exists(path, name)
    if overwrote and not json_out:
        console.print(f"run [bold]{name}[/] exists in {path}; overwriting it")
    t0 = time.perf_counter()
    common = dict(sampler=sampler, steps=steps, seed=seed, y=class_, device="auto",
                  **sampler_kw)
    with progress(json_out) as p:
        bars = _Bars(p, f"{sampler}, {steps} steps, n={n}", steps, path, quiet=json_out)
        if path is None:
            samples = sample_across_ranks(guided, n, callback=bars.advance, **common)
            baseline = None
            seconds = time.perf_counter() - t0
        else:
            rec = record_with_baseline(net, path, name, guided=guided, guidance=guidance, n=n,
                                       model_info=_model_info(net, model, data, size),
                                       callback=bars.advance, on_baseline=bars.baseline,
                                       record_n=record_n, record_every=record_every,
                                       **common)
            samples, baseline, seconds = rec.samples, rec.baseline, rec.seconds
    samples = samples.float().cpu()
    if grid is not None and is_main():  # under torchrun rank 0 holds all samples
        _save_grid(samples, grid, labels)
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
    _print_summary(summary, path, name)


def _save_grid(samples, grid: Path, labels) -> None:
    if samples.ndim != 4:
        raise NoiseshiftError(f"--grid needs image data; samples have shape "
                              f"{tuple(samples.shape[1:])}")
    save_grid(samples[:64], grid, labels=None if labels is None else labels[:64])


def _model_info(net, source, data, size) -> dict:
    """The run's `model` attribute; --data, when given, names the data there."""
    info = describe_model(net, source)
    return info if data is None else {**info, "data": data_spec(data, size)}


class _Bars:
    """One progress bar per recording: the baseline's (when one is recorded first), then
    the run's, each opened on its first step."""

    def __init__(self, p, label: str, steps: int, path, quiet: bool):
        self.p, self.label, self.steps, self.path, self.quiet = p, label, steps, path, quiet
        self.task = None

    def advance(self, info) -> None:
        if self.task is None:
            self.task = self.p.add_task(self.label, total=self.steps)
        self.p.update(self.task, completed=info["i"] + 1)

    def baseline(self, name: str):
        if not self.quiet:
            console.print(f"no unguided run with these settings in {self.path}; recording "
                          f"one first as [bold]{name}[/]")
        task = self.p.add_task(f"baseline: {self.label}", total=self.steps)
        return lambda info: self.p.update(task, completed=info["i"] + 1)


def _print_summary(summary: dict, path, name: str) -> None:
    s = summary
    table = Table(title="Samples", show_header=False)
    for k, v in [
        ("model", s["model"]),
        ("sampler", f"{s['sampler']['name']}, {s['sampler']['steps']} steps"),
        ("samples", f"{s['n']} x {s['shape']}, seed {s['seed']}"),
        ("mean / std", f"{s['sample_mean']:.3f} / {s['sample_std']:.3f}"),
        ("time", f"{s['seconds']:.1f} s"),
        ("recorded to", "-" if path is None else f"{path} (run {name})"),
        ("baseline run", s["baseline"] or "-"),
        ("grid", s["grid"] or "-"),
    ]:
        table.add_row(k, str(v))
    console.print(table)
