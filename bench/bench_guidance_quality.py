"""Shift and sample quality per guidance setting on the default digits model, in one run.

Sweeps w_nag in {0, 0.5, 1, 1.5, 2} for every NAG mode, plus epsilon scaling and the
time-shift sampler at a few settings, all with the same seed and the default sampler; reads
every state with the learned estimator and the independent subspace oracle; prints mean
delta per band of t and FD (paired against the unguided run, bootstrap 95% CIs).

    python bench/bench_guidance_quality.py [--n 512] [--seed 0] [--out bench-out/quality]

Uses the built-in default denoiser and estimator (trained and cached on first use).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from noiseshift.demo import DemoSettings, run_demo

SCALES = (0.5, 1.0, 1.5, 2.0)
MODES = ("estimator", "cf", "cf-read", "cf-read-control")
PEERS = ({"eps_scale": 1.002}, {"eps_scale": 1.005}, {"eps_scale": 1.01},
         {"time_shift": (0.05, 0.3)}, {"time_shift": (0.1, 0.3)}, {"time_shift": (0.1, 0.0)})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-out/quality")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args(argv)
    runs = ({}, *({"nag_scale": w, "nag_mode": m} for m in args.modes.split(",")
                  for w in SCALES), *PEERS)
    settings = DemoSettings(n=args.n, seed=args.seed, runs=runs)
    clock = time.perf_counter()
    res = run_demo(f"{args.out}-seed{args.seed}", settings=settings)
    rep = res.report
    pd.set_option("display.width", 200, "display.max_columns", 30, "display.max_rows", 200)
    print(f"# guidance sweep: n={args.n}, seed={args.seed}, {settings.sampler} "
          f"{settings.steps} steps, {len(runs)} runs ({time.perf_counter() - clock:.0f} s)")
    print("\n## mean delta per band of t (learned meter)\n")
    print(rep.bands.to_string(index=False))
    print("\n## per run, paired against unguided\n")
    print(rep.paired.to_string(index=False))


if __name__ == "__main__":
    main()
