"""Numbers for issue 15: the audit table of the built-in samplers (8/16/32/64 steps) and of
diffusers schedulers (10/25/50 steps), the decomposition of the default digits run, and the
audit's wall time (64-d mixture, 50 steps, n = 1000, 2 threads).

    PYTHONPATH=$PWD python bench/bench_audit.py builtin      # or diffusers, decompose, walltime
    NOISESHIFT_CACHE=/tmp/nscache-demo ... decompose          # needs the default model

Each part prints a markdown table (mean |shift| over the steps with its 95% CI, the largest
step shift, steps resolvable) and writes JSON to $BENCH_OUT (default /tmp/bench_audit).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from noiseshift.analysis.audit import audit_builtin, convergence, default_mixture
from noiseshift.analysis.simulation import exact_meter

OUT = Path(os.environ.get("BENCH_OUT", "/tmp/bench_audit"))
N = int(os.environ.get("BENCH_N", "512"))
DIFFUSERS = [("DDIMScheduler", "trailing", None), ("DDIMScheduler", "linspace", None),
             ("DDIMScheduler", "leading", None), ("EulerDiscreteScheduler", None, None),
             ("DPMSolverMultistepScheduler", None, None),
             ("FlowMatchEulerDiscreteScheduler", None, {"shift": 3.0})]


def _row(res, elapsed: float) -> str:
    tab = res.table
    sig = int(((tab.shift_lo > 0) | (tab.shift_hi < 0)).sum())
    worst = tab.loc[tab["shift"].abs().idxmax()]
    m = res.mean_abs
    return (f"| {res.label} | {m.value:.4f} [{m.lo:.4f}, {m.hi:.4f}] | {worst['shift']:+.4f} "
            f"at t={worst.t:.2f} | {sig}/{len(tab)} | {elapsed:.1f} |")


HEADER = ("| sampler | mean abs shift [95% CI] | largest step shift | steps resolvable | s |\n"
          "|---|---|---|---|---|")


def builtin() -> dict:
    mix = default_mixture()
    meter = exact_meter(mix, "linear")
    print(f"built-in samplers, 64-d mixture, linear schedule, n={N}\n{HEADER}")
    out = {}
    for sampler in ("euler", "heun", "ddim", "euler-maruyama"):
        results = []
        for steps in (8, 16, 32, 64):
            t0 = time.perf_counter()
            res = audit_builtin(mix, "linear", sampler=sampler, steps=steps, n=N, meter=meter)
            print(_row(res, time.perf_counter() - t0), flush=True)
            results.append(res)
        df, order = convergence(results)
        print(f"| {sampler}: fitted order | {order:.2f} | | | |")
        out[sampler] = {"order": order, "audits": [r.to_dict() for r in results]}
    return out


def diffusers_part() -> dict:
    from noiseshift.integrations.audit_diffusers import audit_scheduler

    mix, meters, out = default_mixture(), {}, {}
    print(f"diffusers schedulers, exact MixtureUNet, 64-d mixture, n={N}\n{HEADER}")
    for name, spacing, config in DIFFUSERS:
        results = []
        for steps in (10, 25, 50):
            t0 = time.perf_counter()
            res = audit_scheduler(mix, name, steps=steps, spacing=spacing, config=config, n=N,
                                  meters=meters)
            print(_row(res, time.perf_counter() - t0), flush=True)
            results.append(res)
        df, order = convergence(results)
        key = f"{name}-{spacing or 'default'}"
        print(f"| {key}: fitted order | {order:.2f} | | | |")
        out[key] = {"order": order, "audits": [r.to_dict() for r in results]}
    return out


def decompose_part() -> dict:
    from noiseshift.analysis.decompose import decompose_run
    from noiseshift.data import load_data
    from noiseshift.defaults import DEFAULT_DATA
    from noiseshift.io import open_trajectories
    from noiseshift.pretrained import get_estimator
    from noiseshift.recording import load_denoiser, sample_and_record
    from noiseshift.report.audit import decomposition_figure

    n = int(os.environ.get("BENCH_DEMO_N", "256"))
    path = OUT / f"demo-n{n}.h5"
    model = load_denoiser()
    if not path.exists():
        sample_and_record(model, path, "unguided", n, seed=0)
    run = open_trajectories(path).run("unguided")
    meter = get_estimator("learned", DEFAULT_DATA, "linear")
    t0 = time.perf_counter()
    dec = decompose_run(model, run, meter, load_data(DEFAULT_DATA), k=8)
    print(f"decomposition of the default digits run (euler-maruyama 16 steps, n={n}, k=8, "
          f"learned meter) in {time.perf_counter() - t0:.0f} s; reproduced max |diff| "
          f"{dec.reproduced}")
    print("| t band | total | sampler | network |\n|---|---|---|---|")
    for _, r in dec.bands.iterrows():
        cells = [f"{r[p]:+.4f} [{r[p + '_lo']:+.4f}, {r[p + '_hi']:+.4f}]"
                 for p in ("total", "sampler", "network")]
        print(f"| {r.band} | " + " | ".join(cells) + " |")
    print(dec.sentence)
    decomposition_figure(dec, OUT / "decompose-demo.png")
    return dec.to_dict()


def walltime() -> dict:
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    mix = default_mixture()
    meter = exact_meter(mix, "linear")
    t1 = time.perf_counter()
    res = audit_builtin(mix, "linear", sampler="euler-maruyama", steps=50, n=1000, meter=meter)
    t2 = time.perf_counter()
    print(f"audit wall time, euler-maruyama 50 steps, 64-d mixture, n=1000, 2 threads: "
          f"{t2 - t0:.1f} s (meter fit {t1 - t0:.1f} s, run + readings + CIs {t2 - t1:.1f} s)")
    print(res.verdict)
    return {"total_s": t2 - t0, "meter_s": t1 - t0, "audit_s": t2 - t1, "verdict": res.verdict}


PARTS = {"builtin": builtin, "diffusers": diffusers_part, "decompose": decompose_part,
         "walltime": walltime}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for part in sys.argv[1:] or list(PARTS):
        if part != "walltime":
            torch.set_num_threads(1)
        result = PARTS[part]()
        (OUT / f"{part}.json").write_text(json.dumps(result, indent=1, default=float))
