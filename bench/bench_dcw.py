"""What DCW costs per step on the default digits model: whole sampling runs, unguided and with
each DCW form, interleaved (so load changes hit all alike); medians and their ratios.

    python bench/bench_dcw.py --n 256 --steps 16 --repeats 7

Quality numbers come from bench_guidance.py --digits with 'dcw:S' / 'dcw-pixel:S' settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from noiseshift.guidance import build_guidance
from noiseshift.guidance.dcw import dcw_step
from noiseshift.pretrained import default_model
from noiseshift.sampling import sample


def bench_cost(n: int, steps: int, repeats: int, sampler: str) -> dict:
    model = default_model(device="cpu")
    runs = {"unguided": build_guidance(model)[0],
            "dcw wavelet": build_guidance(model, dcw=-0.01)[0],
            "dcw pixel": build_guidance(model, dcw=-0.01, dcw_form="pixel")[0]}
    times: dict = {k: [] for k in runs}
    for _ in range(repeats):
        for name, net in runs.items():
            t0 = time.perf_counter()
            sample(net, n, sampler=sampler, steps=steps, seed=0, device="cpu")
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"default digits model, {sampler} {steps} steps, n={n}, {repeats} interleaved runs")
    for name, m in med.items():
        print(f"{name:<12} {1000 * m / steps:8.2f} ms/step   {m / med['unguided']:.3f}x")
    med.update(bench_parts(model, n, repeats))
    return med


def bench_parts(model, n: int, repeats: int) -> dict:
    """The correction alone against one forward pass on the same batch (less noisy than
    whole runs on a loaded machine)."""
    x = torch.randn(n, *model.config["shape"], generator=torch.Generator().manual_seed(0))
    x0, t = 0.5 * x, torch.full((n,), 0.5, dtype=torch.float64)
    calls = {"forward": lambda: model(x, t),
             "dcw wavelet": lambda: dcw_step(x, x0, 0.5, -0.01, "wavelet"),
             "dcw pixel": lambda: dcw_step(x, x0, 0.5, -0.01, "pixel")}
    times: dict = {k: [] for k in calls}
    with torch.no_grad():
        for _ in range(5 * repeats):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("dcw wavelet", "dcw pixel"):
        print(f"{name} alone: {1000 * med[name]:.2f} ms, {med[name] / med['forward']:.4f}x "
              f"one forward pass ({1000 * med['forward']:.1f} ms)")
    return {f"{k} alone": v for k, v in med.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sampler", default="euler-maruyama")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return bench_cost(a.n, a.steps, a.repeats, a.sampler)


if __name__ == "__main__":
    main()
