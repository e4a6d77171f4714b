"""Recording overhead: sampling with and without the HDF5 trajectory recorder.

Same model, seed, n and steps; plain and recorded runs interleaved (so load from other
processes hits both alike), median of the repeats, ratio printed. Target: <= 1.10x.

    python bench/bench_recording.py                     # default-architecture UNet, ~30 s
    python bench/bench_recording.py --n 512 --steps 32 --model default
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from noiseshift.models import load_model
from noiseshift.recording import sample_and_record
from noiseshift.sampling import sample


def bench_model(spec: str):
    """'arch': the default UNet's architecture with fresh weights (timing does not depend
    on the weights); 'default': the trained built-in model; else a checkpoint path."""
    if spec == "default":
        from noiseshift.pretrained import default_model

        return default_model()
    if spec != "arch":
        return load_model(spec, device="auto")
    from noiseshift.data import load_data
    from noiseshift.models import build_model
    from noiseshift.pretrained import DEFAULT_DATA, DEFAULT_DENOISER, DEFAULT_SCHEDULE
    from noiseshift.training import denoiser_config

    recipe = DEFAULT_DENOISER
    cfg = denoiser_config(load_data(DEFAULT_DATA), DEFAULT_SCHEDULE, arch=recipe["arch"],
                          channels=recipe["channels"], t_dropout=recipe["t_dropout"])
    return build_model(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="arch", help="arch (default), default, or a path")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--sampler", default="euler-maruyama")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = bench_model(args.model)
    kw = {"sampler": args.sampler, "steps": args.steps, "seed": 0}
    times: dict[str, list[float]] = {"plain": [], "recorded": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        sample(model, args.n, **{**kw, "steps": 2})  # warm-up
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            plain = sample(model, args.n, **kw)
            times["plain"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rec = sample_and_record(model, path, f"r{rep}", args.n, **kw)
            times["recorded"].append(time.perf_counter() - t0)
            assert torch.equal(plain, rec), "recording changed the samples"
        size = path.stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, n={args.n}, {args.sampler} {args.steps} steps, "
          f"{args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}")
    for k, v in times.items():
        print(f"  {k:9s} median {med[k]:7.3f} s   runs " + " ".join(f"{x:.3f}" for x in v))
    print(f"  file size {size / 2**20:.1f} MiB for {args.repeats} runs")
    print(f"recording overhead: {med['recorded'] / med['plain']:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
