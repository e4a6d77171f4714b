"""`sample` and `estimate` at world size 2 against world size 1 (torchrun, gloo, one thread per
process), and what `--record-n` / `--record-every` save on disk.

    NOISESHIFT_CACHE=/tmp/nscache-demo python bench/bench_distributed.py
    python bench/bench_distributed.py --n 512 --steps 32 --repeats 3

Timing: for each world size W in (1, 2) and each repeat, one `torchrun --nproc-per-node W`
job runs this file as a worker: load the built-in digits model and estimator, a barrier,
then `recording.sample_and_record` (euler-maruyama, every step recorded) timed between
barriers, then `estimation.estimate_file` over the file it wrote, timed the same way. So
process start, imports and model loading are left out. World sizes are interleaved and the
best repeat is kept (robust to other load). Ratios are time(W=1) / time(W=2): 2.0 is perfect
scaling; on a 2-core machine shared with other work expect less.

Sizes (computed, not written): bytes per 1,000 samples per recorded step = 1000 x (states +
x0 predictions) x 4 bytes x prod(shape), checked against the measured file; then a
50,000-sample, 250-step run in full and with --record-n 2048 --record-every 10, for the
16x16 digits and for SiT's 4x32x32 latents.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(out: Path, n: int, steps: int) -> None:
    import torch

    from noiseshift import distributed
    from noiseshift.estimation import estimate_file
    from noiseshift.pretrained import estimator_for
    from noiseshift.recording import load_denoiser, sample_and_record

    torch.set_num_threads(1)
    distributed.init("cpu")
    model = load_denoiser(None, "cpu")
    estimator_for(model, None, device="cpu")  # cached: loaded, not trained
    traj = out.with_suffix(".h5")
    distributed.barrier()
    t0 = time.perf_counter()
    sample_and_record(model, traj, "em", n, sampler="euler-maruyama", steps=steps, seed=0,
                      device="cpu")
    distributed.barrier()
    t1 = time.perf_counter()
    estimate_file(traj, "learned", out=out.with_suffix(".est.h5"), device="cpu")
    distributed.barrier()
    t2 = time.perf_counter()
    if distributed.is_main():
        out.write_text(json.dumps({"sample_s": t1 - t0, "estimate_s": t2 - t1,
                                   "file_bytes": traj.stat().st_size}))
    distributed.destroy()


def run(world_size: int, folder: Path, tag: str, n: int, steps: int) -> dict:
    out = folder / f"{tag}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(world_size), __file__, "--", "--worker", str(out), "--n", str(n),
           "--steps", str(steps)]
    subprocess.run(cmd, check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def sizes(measured_bytes: int, n: int, steps: int) -> dict:
    def per_k(shape):  # bytes per 1,000 samples per step: states + x0_pred, float32
        return 1000 * 2 * 4 * math.prod(shape)

    def run_bytes(shape, n_all, n_rec, steps_rec):
        return n_rec * steps_rec * per_k(shape) / 1000 + n_all * 4 * math.prod(shape)

    out = {"per_1000_samples_per_step_bytes": {"digits 1x16x16": per_k((1, 16, 16)),
                                               "latents 4x32x32": per_k((4, 32, 32))},
           "measured_per_1000_per_step_bytes": measured_bytes / (n * steps) * 1000}
    for name, shape in (("digits 1x16x16", (1, 16, 16)), ("latents 4x32x32", (4, 32, 32))):
        full = run_bytes(shape, 50_000, 50_000, 250)
        sub = run_bytes(shape, 50_000, 2048, 25)
        out[f"50k x 250 steps, {name}"] = {
            "full_GB": round(full / 1e9, 2),
            "record_n_2048_GB": round(run_bytes(shape, 50_000, 2048, 250) / 1e9, 2),
            "record_every_10_GB": round(run_bytes(shape, 50_000, 50_000, 25) / 1e9, 2),
            "record_n_2048_every_10_GB": round(sub / 1e9, 3), "saving_x": round(full / sub)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", type=Path)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.worker is not None:
        worker(a.worker, a.n, a.steps)
        return
    best: dict = {1: {}, 2: {}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for ws in (1, 2):
                res = run(ws, Path(tmp), f"ws{ws}-{r}", a.n, a.steps)
                for k, v in res.items():
                    best[ws][k] = min(best[ws].get(k, math.inf), v)
    report = {
        "setup": {"n": a.n, "steps": a.steps, "repeats": a.repeats, "model": "built-in digits "
                  "UNet", "sampler": "euler-maruyama", "threads_per_process": 1,
                  "cpus": os.cpu_count()},
        "sample_s": {ws: round(best[ws]["sample_s"], 3) for ws in (1, 2)},
        "estimate_s": {ws: round(best[ws]["estimate_s"], 3) for ws in (1, 2)},
        "speedup_ws2_over_ws1": {
            "sample": round(best[1]["sample_s"] / best[2]["sample_s"], 2),
            "estimate": round(best[1]["estimate_s"] / best[2]["estimate_s"], 2)},
        "sizes": sizes(best[1]["file_bytes"], a.n, a.steps),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
