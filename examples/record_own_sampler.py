"""Bring your own model and sampler: write a trajectory file with plain h5py, then read it.

noiseshift reads trajectory files that any program can write by following
docs/trajectory-format.md. This script is that outside program. "Your model" is a velocity
denoiser on a 64-d Gaussian mixture (noiseshift's exact `MixtureDenoiser`, standing in for
any network you have) and "your sampler" is a hand-written Euler loop; neither goes through
noiseshift's samplers or its `TrajectoryWriter`. The recording uses only h5py and follows the
spec: root attributes, one group per run under /runs, JSON attributes, `t` and the states
chunked one step per chunk, each state on disk before `t` grows to include it, and
`complete = true` set last.

Then noiseshift takes over: `noiseshift.io.validate` checks the file, and the exact oracle
(the mixture's true p(t | x), from `pretrained.get_estimator("oracle", ...)`) reads the noise
level of every recorded state, giving the sampler's noise shift per step.

    python examples/record_own_sampler.py --out own-sampler-out
    python examples/record_own_sampler.py --out /tmp/own --tiny     # fewer samples
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from noiseshift.data import MixtureDenoiser, make_gmm
from noiseshift.estimation import estimate_file
from noiseshift.io import validate
from noiseshift.pretrained import get_estimator


def euler_sample(model, n: int, dim: int, steps: int, seed: int, on_step):
    """Rectified-flow Euler from t = 1 to 0: x <- x + (t_next - t) v(x, t).

    The model predicts velocity v = eps - x0 under x_t = (1 - t) x0 + t eps, so its x0
    prediction is x - t v. ``on_step(i, t, x, x0_pred)`` sees each state before the update.
    """
    ts = np.linspace(1.0, 0.0, steps + 1)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((n,), ts[i], dtype=torch.float64)
            v = model(x, t)
            on_step(i, ts[i], x.numpy(), (x - ts[i] * v).numpy())
            x = x + (ts[i + 1] - ts[i]) * v
    return x.numpy()


def record_run(path: Path, run: str, model, n: int, dim: int, steps: int, seed: int,
               model_attr: dict) -> None:
    """Sample with `euler_sample` into a new file, writing format v1 with nothing but h5py."""
    shape = (dim,)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "noiseshift.trajectories"
        f.attrs["version"] = 1
        g = f.create_group(f"runs/{run}")
        g.attrs["schedule"] = json.dumps({"name": "linear"})
        g.attrs["sampler"] = json.dumps({"name": "euler", "steps": steps})
        g.attrs["guidance"] = json.dumps({})
        g.attrs["model"] = json.dumps(model_attr)
        g.attrs["seed"] = seed
        g.attrs["created"] = datetime.now(timezone.utc).isoformat()
        g.attrs["complete"] = False  # true only once everything else is on disk
        t_ds = g.create_dataset("t", shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        big = {"maxshape": (None, n, *shape), "dtype": "f4", "chunks": (1, n, *shape)}
        states = g.create_dataset("states", shape=(0, n, *shape), **big)
        x0_pred = g.create_dataset("x0_pred", shape=(0, n, *shape), **big)

        def on_step(i, t, x, x0):
            for ds, a in ((states, x), (x0_pred, x0)):
                ds.resize(i + 1, axis=0)
                ds[i] = a
            f.flush()
            t_ds.resize(i + 1, axis=0)  # a crash before this line leaves a valid file
            t_ds[i] = t
            f.flush()

        samples = euler_sample(model, n, dim, steps, seed, on_step)
        g.create_dataset("samples", data=samples.astype(np.float32))
        f.flush()
        g.attrs["complete"] = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("own-sampler-out"), help="output folder")
    ap.add_argument("--n", type=int, default=512, help="samples")
    ap.add_argument("--steps", type=int, default=16, help="Euler steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="128 samples, 8 steps (a smoke test)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.n, args.steps = 128, 8

    data = make_gmm(dim=64)
    model = MixtureDenoiser(data.mixture, "linear")  # "someone's model": any (x, t) -> v
    args.out.mkdir(parents=True, exist_ok=True)
    traj = args.out / "own-sampler.h5"
    record_run(traj, "euler", model, args.n, data.dim, args.steps, args.seed,
               model_attr={"name": "exact-mixture", "data": data.spec})

    summary = validate(traj)  # raises TrajectoryError naming the first problem
    r = summary["runs"][0]
    print(f"wrote {traj}: valid format v{summary['version']}, run {r['name']!r}, "
          f"{r['steps']} steps x {r['n']} samples, complete={r['complete']}")

    # The exact oracle reads t' from the mixture's true p(t | x); any estimator checkpoint
    # can be passed to estimate_file by its path.
    oracle_path = get_estimator("oracle", data, "linear").save(args.out / "oracle.pt")
    res = estimate_file(traj, [str(oracle_path)])
    print(f"estimates -> {res.path}")
    print("noise shift of the Euler sampler, read by the exact oracle "
          "(delta = t' - reference(t); + means noisier than scheduled):")
    print(f"{'step':>4} {'t':>6} {'reference':>9} {'t_hat':>7} {'delta':>8}   95% CI")
    for rec in res.results[0].records:
        flag = "  (blind zone)" if rec["blind"] else ""
        print(f"{rec['step']:>4} {rec['t']:6.3f} {rec['reference']:9.4f} {rec['t_hat']:7.4f} "
              f"{rec['delta']:+8.4f}   [{rec['ci_low']:+.4f}, {rec['ci_high']:+.4f}]{flag}")
    seen = [rec["delta"] for rec in res.results[0].records if not rec["blind"]]
    print(f"mean delta over readable steps: {np.mean(seen):+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
