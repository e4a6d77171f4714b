"""`noiseshift sample`: draw samples and record every step to an HDF5 trajectory file.

The recording, and the unguided baseline a guided run is recorded beside, are
`recording.record_with_baseline`; this module parses the options and prints.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich.table import Table

from ..analysis.safety import guarded, safety_message, sampler_make
from ..data import load_data
from ..defaults import DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_STEPS
from ..distributed import is_main
from ..errors import NoiseshiftError
from ..guidance import (
    DCW_FORMS,
    DEFAULT_DCW_FORM,
    DEFAULT_NAG_MODE,
    GuidanceWarning,
    build_guidance,
    modes_help,
    parse_mode,
    scale_help,
)
from ..guidance.sampler_side import check_corrector
from ..integrations.pipeline_runs import (
    folder_run,
    is_diffusers,
    refuse_builtin_options,
    refuse_diffusers_options,
)
from ..io.images import save_grid
from ..io.paths import refuse_overwriting_inputs
from ..pretrained import estimator_for, independent_meter
from ..recording import SamplerBackend, describe_model, record_with_baseline
from ..runspec import RunSpec
from ..sampling import sampler_settings
from ..timegrid import GRIDS, parse_grid_name, parse_timesteps
from .common import (
    app,
    console,
    data_option,
    err_console,
    print_json,
    progress,
    size_option,
    training_bar,
)
from .denoisers import denoiser_with_progress
from .inputs import data_spec

DEFAULT_RECORD = "trajectories.h5"
NAG_MODE_HELP = modes_help()


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
                     data: dict | None = None, dcw: float = 0.0,
                     dcw_form: str = DEFAULT_DCW_FORM, corrector=None) -> dict:
    """`build_guidance` keywords from the command line's strings; loads the estimator that
    estimator-based NAG modes read (`--estimator`, else the built-in learned one)."""
    opts = dict(nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale,
                eps_scale=_numbers(eps_scale, "--eps-scale", (1, 2)),
                time_shift=_numbers(time_shift, "--time-shift"),
                interval=_numbers(interval, "--guidance-interval"), dcw=dcw,
                dcw_form=dcw_form, corrector=_numbers(corrector, "--corrector", (1, 2, 3)))
    gated = opts["corrector"] is not None and len(opts["corrector"]) == 3
    if (nag_scale and parse_mode(nag_mode).needs_estimator) or gated:
        with training_bar(quiet, "noise-level estimator (trained on first use only)") as bar:
            opts["estimator"] = estimator_for(net, estimator, device=device, progress=bar,
                                              data=data)
    return opts


def sampler_options(sampler: str, diffusion: float | None, eta: float | None,
                    timesteps: str | None = None) -> dict:
    """The sampler's keywords from --diffusion, --eta (each only for its sampler) and
    --timesteps."""
    kw = {} if timesteps is None else {"timesteps": parse_timesteps(timesteps)}
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
                              "`noiseshift train`, diffusers:DIR (a saved diffusers "
                              "pipeline folder) or diffusers:ORG/NAME[@REVISION] (a Hub id, "
                              "from the local Hugging Face cache; see --allow-download); "
                              "default: the built-in digits model (trained on first use, "
                              "then cached)."),
    allow_download: bool = typer.Option(False, "--allow-download", help="diffusers:ORG/NAME "
                                        "only: download the pipeline when it is not in the "
                                        "Hugging Face cache. Without it nothing is fetched "
                                        "(local_files_only); HF_HUB_OFFLINE=1 forbids "
                                        "downloads even with it."),
    scheduler: str = typer.Option(None, "--scheduler", help="diffusers:DIR only: replace "
                                  "the pipeline's scheduler (same config): ddpm, ddim, euler, "
                                  "dpm++ or flow-euler."),
    spacing: str = typer.Option(None, "--spacing", help="diffusers:DIR only: timestep "
                                "spacing, leading, linspace or trailing."),
    prompt: str = typer.Option(None, "--prompt", help="diffusers:DIR only: the prompt of a "
                               "text-to-image pipeline."),
    sampler: str = typer.Option(DEFAULT_SAMPLER, "--sampler", help="euler, heun, "
                                "euler-maruyama, ddim or dpmpp-2m."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=1, help="Sampling steps."),
    n: int = typer.Option(DEFAULT_N, "--n", "-n", min=1, help="Number of samples (under torchrun "
                          "write -n, or put -- before the command)."),
    seed: int = typer.Option(0, "--seed", help="Seed for labels, initial noise and "
                             "sampler noise: the same seed gives the same samples."),
    class_: int = typer.Option(None, "--class", help="Class label for every sample; "
                               "default: labels drawn from the seed."),
    nag_scale: float = typer.Option(0.0, "--nag-scale", help=scale_help()),
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
    dcw: float = typer.Option(0.0, "--dcw", help="DCW (Yu et al., CVPR 2026): after each "
                              "step x <- x + lambda (x - x0), lambda = DCW * t in the Haar "
                              "low band (wavelet form) or DCW everywhere (pixel form); "
                              "negative moves states toward x0; 0 = off. Stacks with "
                              "--nag-scale and --eps-scale."),
    dcw_form: str = typer.Option(DEFAULT_DCW_FORM, "--dcw-form", help="DCW's form: "
                                 + " or ".join(DCW_FORMS) + f" (default {DEFAULT_DCW_FORM}, "
                                 "the paper's recommended low-band correction)."),
    estimator: str = typer.Option(None, "--estimator", help="Noise-level estimator for the "
                                  "estimator-based NAG modes: a checkpoint or a name "
                                  "(learned, oracle, ...); default: the built-in one."),
    diffusion: float = typer.Option(None, "--diffusion", min=0.0, help="Euler-Maruyama: "
                                    "g(t)^2 = DIFFUSION * sigma(t) (default 2, i.e. 2t "
                                    "under the linear schedule)."),
    eta: float = typer.Option(None, "--eta", min=0.0, help="DDIM: 0 deterministic (default),"
                              " 1 ancestral."),
    timesteps: str = typer.Option(None, "--timesteps", metavar="FILE|LIST|NAME", help="The "
                                  "time grid, decreasing in [0, 1] (a comma list, or a file "
                                  "from `noiseshift retime`), which replaces --steps (steps = "
                                  "its length - 1); or a spacing of --steps steps: logsnr "
                                  "(uniform in log-SNR), karras[:rho=7] (EDM), power[:k=2] "
                                  "(uniform in t^(1/k)). diffusers:DIR: the file's diffusers "
                                  "timesteps (or its sigmas, for Euler and FlowMatch "
                                  "schedulers), integer training timesteps, or "
                                  "sigmas:S0,S1,...,0."),
    corrector: str = typer.Option(None, "--corrector", metavar="SNR[,STEPS[,TOL]]",
                                  help="A Langevin corrector after each step (STEPS moves, "
                                  "default 1, step size from SNR, e.g. 0.1), on every state, "
                                  "or with TOL only where the estimator reads the state off "
                                  "schedule by more than TOL. Costs STEPS model evaluations "
                                  "per corrected state."),
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
    safety: bool = typer.Option(True, "--safety/--no-safety", help="NAG only: first draw a "
                                "pilot of 32 samples guided and unguided, read both with an "
                                "independent meter (not the one NAG follows), and halve the "
                                "scale while guidance moves the states off the schedule "
                                "(stop after 3 halvings). Recorded in the run's guidance."),
):
    """Sample from a denoiser and record the trajectory: every state x_t the sampler
    visits, the model's x0 prediction there, the nominal t, labels and final samples.

    The recording goes to --record (default trajectories.h5 in the current folder) as run
    --run, ready for `noiseshift estimate` and `noiseshift report`. Several runs (say a
    baseline and a guided one with the same seed) live side by side in one file.

    Example: `noiseshift sample --sampler euler-maruyama --steps 32 --record traj.h5`.
    """
    refuse_overwriting_inputs([None if no_record else record or DEFAULT_RECORD, grid], model,
                              data, estimator)
    path = None if no_record else Path(record or DEFAULT_RECORD)
    if grid is not None and grid.suffix.lower() != ".png":
        raise NoiseshiftError("--grid needs a .png file name", grid)
    run_opts = dict(n=n, steps=steps, seed=seed, run=run, record_n=record_n,
                    record_every=record_every)
    guide_opts = _guide_opts(nag_scale=nag_scale, nag_mode=nag_mode, cfg_scale=cfg_scale,
                             eps_scale=eps_scale, interval=guidance_interval,
                             estimator=estimator, dcw=dcw, dcw_form=dcw_form, corrector=corrector)
    if is_diffusers(model):
        refuse_builtin_options(sampler, diffusion, eta, time_shift)
        if guide_opts.pop("corrector", None) is not None:
            raise NoiseshiftError("--corrector applies to the built-in samplers only")
        if timesteps is not None:
            run_opts["grid"] = diffusers_timesteps(timesteps)
        spec, backend = folder_run(
            model, scheduler=scheduler, spacing=spacing, device=device, prompt=prompt,
            allow_download=allow_download, class_label=class_,
            progress=not json_out and err_console.is_terminal, safety=safety,
            **_pipeline_guidance(**guide_opts), **run_opts)
    else:
        refuse_diffusers_options(scheduler=scheduler, spacing=spacing, prompt=prompt,
                                 allow_download=allow_download or None)
        spec, backend = _builtin_run(
            model, sampler=sampler, diffusion=diffusion, eta=eta, time_shift=time_shift,
            timesteps=timesteps, class_=class_, data=data, size=size, device=device,
            quiet=json_out, guide_opts=guide_opts, safety=safety, **run_opts)
    _safety_warning(spec.guidance.get("safety"))
    rec = _record(spec, backend, path, quiet=json_out)
    if grid is not None and is_main():  # under torchrun rank 0 holds all samples
        _save_grid(rec, spec, grid)
    summary = _summary(spec, backend, rec, path, grid)
    if json_out:
        print_json(summary)
        return
    if rec.overwrote:
        console.print(f"run [bold]{rec.run}[/] existed in {path}; overwrote it", soft_wrap=True)
    _print_summary(summary, path, rec.run)


def diffusers_timesteps(text: str) -> dict:
    """--timesteps for a pipeline, as `pipeline_run`'s ``grid``: a `noiseshift retime
    --scheduler` file's "diffusers" lists (the pipeline's scheduler takes the one it can:
    `retime_diffusers.pick_grid`), a comma list of integer training timesteps, or
    "sigmas:" and a comma list of the scheduler's sigmas, the final one included."""
    path = Path(text)
    if parse_grid_name(text) is not None:
        raise NoiseshiftError(f"--timesteps {', '.join(GRIDS)} apply to the built-in "
                              f"samplers; for a pipeline use --spacing or a `noiseshift "
                              f"retime` file")
    if path.is_file():
        try:
            body = json.loads(path.read_text())["diffusers"]
            keys = ("timesteps", "sigmas", "sigmas_kind", "relabel")
            return {k: body[k] for k in keys if k in body}
        except (ValueError, KeyError, TypeError):
            raise NoiseshiftError("--timesteps for diffusers needs a file from `noiseshift "
                                  "retime --scheduler ...` (with a diffusers grid)",
                                  path) from None
    key, _, values = text.rpartition(":") if text.startswith("sigmas:") else ("", "", text)
    return {key or "timesteps": list(_numbers(values, "--timesteps", range(1, 10001)))}


def _pipeline_guidance(*, eps_scale, interval, **opts) -> dict:
    """`pipeline_run`'s guidance keywords from the command line's strings."""
    return {**opts, "eps_scale": _numbers(eps_scale, "--eps-scale", (1, 2)),
            "interval": _numbers(interval, "--guidance-interval")}


def _guide_opts(*, corrector, **opts) -> dict:
    """The guidance options, a --corrector checked before any model is loaded or trained."""
    if corrector is not None:
        check_corrector(*_numbers(corrector, "--corrector", (1, 2, 3)))
        opts["corrector"] = corrector
    return opts


def _safety_warning(check: dict | None) -> None:
    line = None if check is None else safety_message(check)
    if line:
        err_console.print(f"[bold yellow]warning:[/] {line}", highlight=False)


def _builtin_run(model, *, sampler, diffusion, eta, time_shift, timesteps, class_, data, size,
                 device, quiet, guide_opts, run, safety=False, **run_opts
                 ) -> tuple[RunSpec, SamplerBackend]:
    """(the spec, the backend) of a run of a built-in-protocol denoiser: options checked and
    labels drawn before the model or its estimator is loaded or trained."""
    sampler_kw = sampler_options(sampler, diffusion, eta, timesteps)
    # bad options fail before any work (a grid's name was checked when parsed; its times
    # need the model's schedule)
    sampler_settings(sampler, 1, **{**sampler_kw, "timesteps": None})
    net = denoiser_with_progress(model, device, quiet=quiet)
    spec = RunSpec.for_model(net, sampler=sampler, y=class_, **run_opts, **sampler_kw,
                             model_info=_model_info(net, model, data, size))
    opts = guidance_options(net, time_shift=time_shift, device=device, quiet=quiet,
                            data=data_spec(data, size), **guide_opts)
    guided, guidance = guided_model(net, **opts)
    spec, backend = spec.with_guidance(guidance, run), SamplerBackend(net, guided, source=model)
    if safety and opts["nag_scale"]:
        est = opts.get("estimator")
        meter = independent_meter(spec.model.get("data"), net.schedule,
                                  avoid=None if est is None else est.name)
        spec, backend = guarded(spec, sampler_make(net, opts, device, model),
                                opts["nag_scale"], meter)
    return spec, backend


def _record(spec: RunSpec, backend, path, quiet: bool):
    """`record_with_baseline`, with a progress bar per recorded run."""
    with progress(quiet) as p:
        bars = _Bars(p, f"{spec.sampler}, {spec.steps} steps, n={spec.n}", spec.steps, path,
                     quiet=quiet)
        return record_with_baseline(spec, backend, path, callback=bars.advance,
                                    on_baseline=bars.baseline)


def _save_grid(rec, spec: RunSpec, grid: Path) -> None:
    x = rec.images if rec.images is not None else rec.samples
    if x is None or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise NoiseshiftError(f"--grid needs image data; samples have shape "
                              f"{None if x is None else tuple(x.shape[1:])}")
    labels = spec.y
    save_grid(x[:64].float().cpu(), grid, labels=None if labels is None else labels[:64])


def _summary(spec: RunSpec, backend, rec, path, grid) -> dict:
    """What the command prints (as JSON with --json)."""
    x = (rec.samples if rec.samples is not None else rec.images).float().cpu()
    return {**backend.summary(spec), "guidance": spec.guidance, "n": spec.n,
            "shape": list(x.shape[1:]), "seed": spec.seed, "seconds": round(rec.seconds, 3),
            "record": None if path is None else str(path), "run": rec.run,
            "overwrote": rec.overwrote, "baseline": rec.baseline,
            "grid": None if grid is None else str(grid),
            "sample_mean": float(x.mean()), "sample_std": float(x.std())}


def _model_info(net, source, data, size) -> dict:
    """The run's `model` attribute; --data, when given, names the data there."""
    info = describe_model(net, source)
    if data is not None:  # NaN or unreadable data fail here, not in a later command
        load_data(data_spec(data, size))
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
        task = []

        def advance(info):
            if not task:
                task.append(self.p.add_task(f"baseline: {self.label}", total=self.steps))
            self.p.update(task[0], completed=info["i"] + 1)

        return advance


def _safety_row(check: dict | None) -> str:
    if check is None:
        return "-"
    if check["action"] in ("skipped",):
        return check["action"]
    last = check["readings"][-1]
    return (f"{check['action']} at scale {check['scale']:g} ({check['meter']} meter: shift "
            f"x{last['ratio']:.2f} of unguided, {check['pilot_n']}-sample pilot, "
            f"{check['seconds']:.1f} s)")


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
        ("safety", _safety_row((s["guidance"] or {}).get("safety"))),
        ("grid", s["grid"] or "-"),
    ]:
        table.add_row(k, str(v))
    console.print(table)
