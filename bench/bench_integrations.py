"""diffusers adapters: `record` overhead and a `guide` step against an unguided step.

One DDPMPipeline (a UNet2DModel of the tiny-DDPM architecture, random weights: timing does
not depend on them) with a DDIM scheduler; plain, recorded and guided calls interleaved (so
load from other processes hits all alike), ratios from one run: of the fastest repeat of
each (the least disturbed by other processes on a shared machine) and of the medians.
The guide uses a learned noise-level estimator of the built-in architecture, briefly trained
(its cost per call does not depend on training), on every step (interval 0..1).
Targets: record <= 1.10x, guide <= 2x.

    python bench/bench_integrations.py                 # 64 samples of 1x16x16, 20 steps
    python bench/bench_integrations.py --n 16 --channels 32,64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMPipeline

from noiseshift.data import load_data
from noiseshift.estimators import LearnedEstimator
from noiseshift.integrations.diffusers import guide, record
from noiseshift.integrations.tiny import tiny_unet


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--channels", default="16,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data("digits")
    unet = tiny_unet(data.shape, tuple(int(c) for c in args.channels.split(",")))
    pipe = DDPMPipeline(unet=unet.eval(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    est = LearnedEstimator(steps=20, calib_points=10, calib_samples=32,
                           device="cpu").fit(data, "vp-cosine")

    def call():
        pipe(batch_size=args.n, num_inference_steps=args.steps, output_type="np",
             generator=torch.Generator().manual_seed(0))

    times: dict[str, list[float]] = {"plain": [], "record": [], "guide": []}
    with tempfile.TemporaryDirectory() as tmp:
        call()  # warm-up
        for rep in range(args.repeats):
            times["plain"].append(timed(call))
            with record(pipe, Path(tmp) / f"{rep}.h5"):
                times["record"].append(timed(call))
            with guide(pipe, est, 1.5, interval=(0.0, 1.0)):
                times["guide"].append(timed(call))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.n} samples of {tuple(data.shape)}, {args.steps} DDIM steps, UNet channels "
          f"{args.channels}, {args.repeats} repeats; fastest (median) s: "
          + ", ".join(f"{k} {best[k]:.3f} ({med[k]:.3f})" for k in times))
    print(f"unguided step: {1000 * best['plain'] / args.steps:.1f} ms")
    for name, target, what in (("record", 1.10, "record overhead"),
                               ("guide", 2.0, "guide step vs unguided step")):
        print(f"{what}: {best[name] / best['plain']:.3f}x (medians "
              f"{med[name] / med['plain']:.3f}x; target <= {target:g}x)")


if __name__ == "__main__":
    main()
