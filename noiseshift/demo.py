"""The whole story on built-in data, end to end: train (or reuse) a denoiser and a noise-level
estimator, record an unguided run beside NAG runs and the peers with the same seeds, read the
real noise level of every state, and write the report.

    from noiseshift.demo import run_demo
    result = run_demo("demo-out", quick=False, data="digits")

The CLI (`noiseshift demo`) only adds progress bars and the final table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from . import pretrained, tiny
from .analysis.probe import probe
from .data import load_data
from .defaults import DEFAULT_N
from .errors import NoiseshiftError
from .estimation import estimate_file
from .estimators.accuracy import heldout_states, mae_by_band
from .guidance import DEFAULT_NAG_MODE, build_guidance
from .pretrained import get_estimator
from .recording import SamplerBackend, record_with_baseline
from .report import build_report, write_report
from .runspec import RunSpec

# The runs, all with the same seed and sampler: the default NAG (`DEFAULT_NAG_MODE`,
# estimator-step, at scale 1.5), estimator-noise and estimator, the classifier-free modes,
# and the two peers at their best settings on the default model. docs/results.md has the
# full sweep (bench/bench_guidance.py --digits).
DEFAULT_NAG = {"nag_scale": 1.5, "nag_mode": DEFAULT_NAG_MODE}
RUNS: tuple[dict, ...] = (
    {},
    DEFAULT_NAG,
    {"nag_scale": 4.0, "nag_mode": "estimator-noise"},
    {"nag_scale": 0.5, "nag_mode": "estimator"},
    {"nag_scale": 1.0, "nag_mode": "cf"},
    {"nag_scale": 0.5, "nag_mode": "cf-calibrated"},
    {"nag_scale": 0.5, "nag_mode": "cf-calibrated-control"},
    {"eps_scale": 0.99},
    {"time_shift": (0.1, 0.3)},
)
QUICK_RUNS: tuple[dict, ...] = (
    {},
    DEFAULT_NAG,
    {"nag_scale": 1.0, "nag_mode": "cf"},
)


@dataclass
class DemoSettings:
    data: str = "digits"
    n: int = DEFAULT_N
    steps: int = pretrained.DEFAULT_STEPS
    sampler: str = pretrained.DEFAULT_SAMPLER
    seed: int = 0
    runs: tuple[dict, ...] = RUNS
    denoiser: dict = field(default_factory=dict)  # recipe overrides
    estimator: dict = field(default_factory=dict)
    n_boot: int = 200

    @classmethod
    def make(cls, data: str = "digits", quick: bool = False, seed: int = 0, n: int | None = None):
        if data not in ("digits", "gmm"):
            raise NoiseshiftError(f"the demo runs on built-in data: digits or gmm, not {data!r}")
        quick = quick or tiny.enabled()
        if not quick:
            return cls(data=data, seed=seed, n=n or DEFAULT_N)
        # Tiny everything: minutes of training would dominate a smoke test.
        return cls(data=data, seed=seed, n=n or tiny.sized("n", 128), steps=8, runs=QUICK_RUNS,
                   n_boot=100, **tiny.sized("quick", {"denoiser": {"steps": 150},
                                                      "estimator": {"steps": 150}}))


@dataclass
class DemoResult:
    out: Path
    trajectories: Path
    estimates: Path
    report_md: Path
    report: object
    probe: object | None
    timings: dict


Progress = Callable[[str, int | None, int | None], None]


def _noop(stage, done=None, total=None):
    pass


def _data_spec(name: str) -> dict:
    return dict(pretrained.DEFAULT_DATA) if name == "digits" else dict(pretrained.DEMO_GMM)


def _train_estimator_child(spec, schedule, recipe, cache):
    """Runs in a separate process (spawned): one torch thread, so the parent's denoiser
    training keeps the other core."""
    os.environ["NOISESHIFT_CACHE"] = cache
    torch.set_num_threads(1)
    pretrained.cached_estimator(spec, schedule, recipe, device="cpu")
    return True


def prepare_models(settings: DemoSettings, device="auto", progress: Progress = _noop):
    """The denoiser and the learned estimator, from the cache or trained. On a cold start both
    train at once, the estimator in a second process."""
    spec = _data_spec(settings.data)
    schedule = pretrained.DEFAULT_SCHEDULE
    den_cached = pretrained.cached_denoiser_path(spec, schedule, settings.denoiser).exists()
    est_cached = pretrained.cached_estimator_path(spec, schedule, settings.estimator).exists()
    pool = None
    if not est_cached and not den_cached:
        pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        future = pool.submit(_train_estimator_child, spec, schedule, settings.estimator,
                             str(pretrained.cache_dir()))
        progress("estimator: training in a parallel process", None, None)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - 1))
    try:
        model = pretrained.cached_denoiser(
            spec, schedule, settings.denoiser, device=device,
            progress=lambda info: progress("training the denoiser", info["step"],
                                           info["steps"]))
        if pool is not None:
            progress("estimator: waiting for the parallel process", None, None)
            future.result()
    finally:
        if pool is not None:
            torch.set_num_threads(threads)
            pool.shutdown()
    est = pretrained.cached_estimator(
        spec, schedule, settings.estimator, device=device,
        progress=lambda info: progress("training the estimator", info["step"], info["steps"]))
    return model, est


def run_demo(out="demo-out", *, quick: bool = False, data: str = "digits", seed: int = 0,
             n: int | None = None, device="auto", progress: Progress = _noop,
             settings: DemoSettings | None = None) -> DemoResult:
    """Record, estimate and report the demo into ``out``; returns where everything went."""
    settings = settings or DemoSettings.make(data, quick, seed, n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    with _timed(timings, "models"):
        model, est = prepare_models(settings, device, progress)
    dataset = load_data(_data_spec(settings.data))
    traj = out / "trajectories.h5"
    traj.unlink(missing_ok=True)  # the demo's own file: start clean
    with _timed(timings, "sampling"):
        record_runs(settings, model, est, dataset, traj, device, progress)
    with _timed(timings, "estimate"):
        res = estimate_file(traj, _meters(settings), device=device, progress=lambda done,
                            total: progress("estimating t'", done, total))
    with _timed(timings, "report"):
        progress("report", None, None)
        rep = build_report(traj, res.path, n_boot=settings.n_boot, seed=settings.seed,
                           data=dataset)
        md = write_report(rep, out / "report", plot=True)
    with _timed(timings, "probe"):
        progress("probe: does the model trust its t input?", None, None)
        pr = probe(model, dataset, n=64 if quick else 256, seed=settings.seed)
    timings["total"] = time.perf_counter() - clock
    return DemoResult(out, traj, res.path, md, rep, pr, timings)


@contextmanager
def _timed(timings: dict, stage: str):
    """Time the block into ``timings[stage]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - t0


def record_runs(settings: DemoSettings, model, est, dataset, traj, device="auto",
                progress: Progress = _noop) -> None:
    """Record ``settings.runs`` into ``traj``, each beside the unguided baseline: one spec,
    resolved once from the settings, guided in turn by each run's options."""
    spec = RunSpec.for_model(model, n=settings.n, sampler=settings.sampler,
                             steps=settings.steps, seed=settings.seed)
    for k, options in enumerate(settings.runs):
        guided, desc = build_guidance(model, estimator=est, data=dataset, **options)
        run = spec.with_guidance(desc)
        stage = f"sampling {run.run} ({k + 1}/{len(settings.runs)})"
        record_with_baseline(
            run, SamplerBackend(model, guided, device, save_x0=False), traj,
            callback=_stage(progress, stage, settings.steps),
            on_baseline=lambda base: _stage(progress, f"sampling {base}", settings.steps))


def _meters(settings: DemoSettings) -> list[str]:
    """The demo's two meters: its learned estimator (by checkpoint path) and an oracle."""
    path = pretrained.cached_estimator_path(_data_spec(settings.data),
                                            pretrained.DEFAULT_SCHEDULE, settings.estimator)
    return [str(path), "subspace" if settings.data == "digits" else "oracle"]


def _stage(progress: Progress, stage: str, steps: int):
    """Open ``stage`` at 0 of ``steps`` and return the sampler callback that advances it."""
    progress(stage, 0, steps)
    return lambda info: progress(stage, info["i"] + 1, steps)


def learned_vs_oracle(settings: DemoSettings, device="auto", n: int = 4096) -> dict | None:
    """On the mixture, the learned estimator's MAE beside the exact oracle's, on the same
    held-out forward-noised states (the ground truth the digits demo does not have)."""
    if settings.data != "gmm":
        return None
    spec = _data_spec("gmm")
    data = load_data(spec)
    est = pretrained.cached_estimator(spec, pretrained.DEFAULT_SCHEDULE, settings.estimator,
                                      device=device)
    oracle = get_estimator("oracle", data, pretrained.DEFAULT_SCHEDULE, device=device)
    x, t = heldout_states(data, pretrained.DEFAULT_SCHEDULE, n=n, seed=settings.seed + 7)
    return mae_by_band({"learned": est, "oracle": oracle}, x, t)
