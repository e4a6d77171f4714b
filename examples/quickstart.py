"""Quickstart: the whole noiseshift workflow from Python, in one page.

It loads the built-in denoiser (16x16 digits, linear schedule) and the built-in noise-level
estimator (both trained on first use and cached under $NOISESHIFT_CACHE), records an unguided
run and an estimator-gradient NAG run from the same seed into one trajectory file, reads the
noise level t' of every recorded state with the learned estimator and the subspace oracle,
and writes a report (report.md, summary.csv, ...) whose summary table it prints.

    python examples/quickstart.py --out quickstart-out            # built-in models
    python examples/quickstart.py --out /tmp/qs --tiny            # tiny models, seconds

The first run without --tiny trains the built-in models (a few minutes on a laptop CPU);
later runs load them from the cache. --tiny swaps in deliberately undertrained models and
skips the sample-quality metrics, so its numbers only show that the pipeline runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from noiseshift import pretrained
from noiseshift.data import load_data
from noiseshift.estimation import estimate_file
from noiseshift.guidance import build_guidance
from noiseshift.models import describe
from noiseshift.recording import sample_and_record
from noiseshift.report import build_report, write_report
from noiseshift.report.tables import demo_tables

TINY_DENOISER = {"steps": 30, "channels": [4, 8]}
TINY_ESTIMATOR = {"steps": 30}
STAGES = ("load (or train) the models", "record two runs", "estimate t'", "report")
T0 = time.perf_counter()


def stage(k: int) -> None:
    """A line on stderr as stage k (0-based) starts: a log or a pipe sees progress too."""
    print(f"[{time.perf_counter() - T0:.0f}s] stage {k + 1}/{len(STAGES)}: {STAGES[k]}",
          file=sys.stderr, flush=True)


def load_models(tiny: bool):
    """The denoiser, the learned estimator, and how `estimate_file` should name that
    estimator ("learned" is the built-in one; a tiny one is passed by its checkpoint path)."""
    spec, schedule = pretrained.DEFAULT_DATA, pretrained.DEFAULT_SCHEDULE
    if not tiny:
        return pretrained.default_model(), pretrained.default_estimator(), "learned"
    model = pretrained.cached_denoiser(spec, schedule, TINY_DENOISER)
    est = pretrained.cached_estimator(spec, schedule, TINY_ESTIMATOR)
    return model, est, str(pretrained.cached_estimator_path(spec, schedule, TINY_ESTIMATOR))


def record(model, est, data, path: Path, n: int, steps: int, seed: int) -> list[str]:
    """An unguided run and a NAG run (scale 1.5, estimator gradient), same seed, one file."""
    names = []
    for options in ({}, {"nag_scale": 1.5, "nag_mode": "estimator", "estimator": est}):
        guided, desc = build_guidance(model, data=data, **options)
        name = "unguided" if desc["kind"] == "none" else desc["kind"]
        sample_and_record(guided, path, name, n, steps=steps, seed=seed, guidance=desc,
                          model_info=describe(model), save_x0=False)
        names.append(name)
    return names


def print_summary(rep, console: Console) -> None:
    for renderable in demo_tables(rep, console.width):  # stacked to fit the terminal
        console.print(renderable)
    console.print("Δ = t' - reference(t), averaged over readable steps (+: noisier than "
                  "scheduled); late: t <= 0.3; FD and accuracy in the digits classifier")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("quickstart-out"), help="output folder")
    ap.add_argument("--n", type=int, default=256, help="samples per run")
    ap.add_argument("--steps", type=int, default=pretrained.DEFAULT_STEPS, help="sampler steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny models (a smoke test)")
    args = ap.parse_args(argv)
    console = Console()

    args.out.mkdir(parents=True, exist_ok=True)
    traj = args.out / "trajectories.h5"
    traj.unlink(missing_ok=True)  # this script's own file: start clean
    stage(0)
    model, est, est_name = load_models(args.tiny)
    data = load_data(pretrained.DEFAULT_DATA)

    stage(1)
    runs = record(model, est, data, traj, args.n, args.steps, args.seed)
    print(f"recorded runs {runs} ({args.n} samples x {args.steps} steps) -> {traj}")

    stage(2)
    res = estimate_file(traj, [est_name, "subspace"])
    print(f"estimates -> {res.path}")

    stage(3)
    rep = build_report(traj, res.path, quality=not args.tiny, data=data)
    md = write_report(rep, args.out / "report", plot=False)
    print_summary(rep, console)
    for line in rep.findings:
        print(f"- {line}")
    print(f"report -> {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
