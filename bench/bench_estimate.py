"""`estimate` throughput against a bare forward pass, and its memory against file size.

    python bench/bench_estimate.py              # the built-in default estimator
    python bench/bench_estimate.py --quick      # same architecture, briefly trained
    python bench/bench_estimate.py --device cuda

Throughput: a trajectory file of S steps x N states of 16x16 digits is read by
`estimate_file` (stream chunks from HDF5, network posterior, read-out, isotonic calibration,
write the estimates file through a temp file and rename). Side by side, in the same run,
the same network does a bare batched forward pass over the same states already in memory,
at the same batch size. Ratio = estimate throughput / bare throughput (target >= 0.8).
Timings are the best of interleaved repeats (robust to other load on the machine).

Memory: peak memory of `estimate_file` with a small chunk budget (1 MiB) on a file holding
1x and 10x that budget of states (target: 10x within 1.5x of 1x). Two measures: the peak of
Python/numpy allocations (tracemalloc, in-process, after a warm-up) and the peak resident
set of a fresh process per file (resource.getrusage; dominated by torch itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from noiseshift.data import load_digits
from noiseshift.estimation import estimate_file
from noiseshift.estimators import LearnedEstimator
from noiseshift.io import TrajectoryWriter
from noiseshift.runtime import generator, resolve_device
from noiseshift.schedules import get_schedule

SPEC = {"name": "digits", "side": 16}


def make_file(path: Path, steps: int, n: int, seed: int = 0) -> Path:
    """Forward-noised digits at `steps` decreasing t, recorded as one run."""
    data, sch = load_digits(16), get_schedule("linear")
    g = generator(seed)
    x0 = data.x[torch.randint(len(data), (n,), generator=g)]
    ts = np.linspace(0.95, 0.05, steps)
    with TrajectoryWriter(path, "bench", n=n, shape=data.shape, schedule=sch,
                          sampler={"name": "bench", "steps": steps},
                          model={"kind": "bench", "data": SPEC}, seed=seed,
                          overwrite=True) as w:
        for i, t in enumerate(ts):
            x = sch.alpha(t) * x0 + sch.sigma(t) * torch.randn(x0.shape, generator=g)
            w.callback({"i": i, "t": float(t), "x": x})
        w.finish(x0)
    return path


def get_estimator(quick: bool, device: str):
    if quick:
        return LearnedEstimator(steps=20, calib_samples=32, device=device).fit(
            load_digits(16), "linear"), "default architecture, 20 training steps"
    from noiseshift.pretrained import default_estimator

    return default_estimator(device=device), "built-in default estimator"


def bare_forward(est, x: torch.Tensor, batch: int) -> None:
    dev = est.device_
    with torch.no_grad():
        for xb in x.split(batch):
            est.net_(xb.to(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize()


def throughput(est, path: Path, states: np.ndarray, repeats: int, batch: int, out: Path):
    x = torch.from_numpy(states.reshape(-1, *states.shape[2:]))
    n = x.shape[0]
    bare_forward(est, x[:batch], batch)  # warm-up
    estimate_file(path, [est_path(est, out.parent)], out=out, device=str(est.device_))
    t_bare, t_est = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare_forward(est, x, batch)
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        estimate_file(path, [est_path(est, out.parent)], out=out, device=str(est.device_),
                      batch_size=batch)
        t_est.append(time.perf_counter() - t0)
    bare, full = min(t_bare), min(t_est)
    return {"states": n, "batch": batch, "bare_s": bare, "estimate_s": full,
            "bare_states_per_s": n / bare, "estimate_states_per_s": n / full,
            "ratio": bare / full}


_SAVED: dict[int, Path] = {}


def est_path(est, folder: Path) -> Path:
    """The estimator as a checkpoint file, as a user passes it (`--estimator est.pt`)."""
    if id(est) not in _SAVED:
        _SAVED[id(est)] = est.save(folder / "est.pt")
    return _SAVED[id(est)]


def memory_child(traj: str, est: str, out: str, budget: int) -> None:
    """In a fresh process: estimate once, print peak RSS (KiB)."""
    import resource

    estimate_file(traj, [est], out=out, device="cpu", max_bytes=budget, batch_size=256)
    print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def memory(est, folder: Path, budget: int) -> dict:
    row = 4 * 256  # bytes per 16x16 float32 state
    per_step = budget // row  # one step of the 1x file is exactly one chunk
    files = {k: make_file(folder / f"mem{k}.h5", steps=k, n=per_step) for k in (1, 10)}
    ckpt = est_path(est, folder)
    estimate_file(files[1], [ckpt], out=folder / "warm.h5", device="cpu", max_bytes=budget,
                  batch_size=256)
    out = {"budget_bytes": budget}
    for k, path in files.items():
        tracemalloc.start()
        estimate_file(path, [ckpt], out=folder / f"mem{k}.est.h5", device="cpu",
                      max_bytes=budget, batch_size=256)
        out[f"tracemalloc_peak_{k}x"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[f"file_bytes_{k}x"] = path.stat().st_size
        res = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(ckpt),
                              str(folder / f"child{k}.h5"), str(budget)],
                             capture_output=True, text=True, check=True)
        out[f"maxrss_kib_{k}x"] = json.loads(res.stdout.strip().splitlines()[-1])["maxrss_kib"]
    out["tracemalloc_ratio"] = out["tracemalloc_peak_10x"] / out["tracemalloc_peak_1x"]
    out["maxrss_ratio"] = out["maxrss_kib_10x"] / out["maxrss_kib_1x"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a briefly trained estimator")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-mib", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        traj, est, out, budget = args.memory_child
        memory_child(traj, est, out, int(budget))
        return
    dev = resolve_device(args.device)
    est, what = get_estimator(args.quick, str(dev))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_file(folder / "traj.h5", args.steps, args.n)
        from noiseshift.io import open_trajectories

        with open_trajectories(path) as tf:
            states = np.asarray(tf.run("bench").states[()])
        thr = throughput(est, path, states, args.repeats, args.batch, folder / "traj.est.h5")
        mem = memory(est, folder, int(args.budget_mib * 2**20))
    result = {"estimator": what, "device": str(dev), "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "throughput": thr, "memory": mem}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"estimator: {what}; device {dev}, torch threads {torch.get_num_threads()}")
    print(f"throughput over {thr['states']} states (batch {thr['batch']}, best of "
          f"{args.repeats}):")
    print(f"  bare forward pass  {thr['bare_states_per_s']:10.0f} states/s")
    print(f"  estimate_file      {thr['estimate_states_per_s']:10.0f} states/s")
    print(f"  ratio              {thr['ratio']:10.2f}   (target >= 0.8)")
    print(f"memory, chunk budget {mem['budget_bytes'] / 2**20:.1f} MiB "
          f"(files {mem['file_bytes_1x'] / 2**20:.1f} and "
          f"{mem['file_bytes_10x'] / 2**20:.1f} MiB):")
    print(f"  tracemalloc peak   1x {mem['tracemalloc_peak_1x'] / 2**20:7.2f} MiB   "
          f"10x {mem['tracemalloc_peak_10x'] / 2**20:7.2f} MiB   ratio "
          f"{mem['tracemalloc_ratio']:.2f}   (target <= 1.5)")
    print(f"  peak RSS           1x {mem['maxrss_kib_1x'] / 1024:7.1f} MiB   "
          f"10x {mem['maxrss_kib_10x'] / 1024:7.1f} MiB   ratio {mem['maxrss_ratio']:.2f}")


if __name__ == "__main__":
    main()
