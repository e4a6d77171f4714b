"""What each meter reads in a recorded digits run, per band of t: noise, or content error?

For every step of each run it prints, averaged per band of t, the mean shift (t' minus the
meter's reference) of the learned estimator and of the subspace oracle on

- the sampler's states;
- the model's x0 prediction re-noised at the step's scheduled level (alpha x0_pred + sigma
  eps, fresh eps): its noise is on schedule by construction, so whatever a meter reads there
  is the prediction's content read as noise;
- real digits re-noised the same way (the control: both meters read ~0 when the t mapping
  and the references are right);

and the share of the x0 prediction's energy outside the digits' 64-d subspace (0 for data).

    python bench/bench_meters.py traj.h5 est.pt [RUN ...]

Issue 20's testbed: `noiseshift sample --model diffusers:DIR --scheduler ddim --spacing
trailing --steps 50 -n 256 --record traj.h5` (DIR from
`integrations.ddpm_testbed.ddpm_testbed_folder()`), est.pt the learned vp-cosine digits
estimator (`pretrained.cached_estimator_path({"name": "digits", "side": 16}, "vp-cosine")`).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from noiseshift.data import load_data
from noiseshift.estimators import NoiseLevelEstimator, SubspaceOracle
from noiseshift.io import open_trajectories

BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0))
COLUMNS = ("learned", "subspace", "learned_x0_renoised", "subspace_x0_renoised",
           "learned_data_renoised", "x0_off_subspace")


def _shift(meter, x, t: float) -> float:
    t_hat = meter.predict(torch.as_tensor(x, dtype=torch.float32))[0].numpy()
    return float((t_hat - meter.reference(np.full(len(x), t))).mean())


def _off_subspace(x, q) -> float:
    xf = torch.as_tensor(x).reshape(len(x), -1).double()
    perp = xf - (xf @ q) @ q.T
    return float((perp**2).sum() / (xf**2).sum())


def step_rows(run, learned, subspace, data, gen) -> list[dict]:
    """One row of `COLUMNS` per recorded step of ``run``."""
    sch, q = run.schedule, data.subspace.double()
    rows = []
    for i in range(run.num_steps):
        t = float(run.t[i])
        x, x0 = np.asarray(run.states[i]), np.asarray(run.x0_pred[i])
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(sch.alpha(tt)), float(sch.sigma(tt))
        eps = torch.randn(x.shape, generator=gen).numpy()
        real = data.x[torch.randint(len(data.x), (len(x),), generator=gen)].numpy()
        rows.append({"t": t, "learned": _shift(learned, x, t),
                     "subspace": _shift(subspace, x, t),
                     "learned_x0_renoised": _shift(learned, a * x0 + s * eps, t),
                     "subspace_x0_renoised": _shift(subspace, a * x0 + s * eps, t),
                     "learned_data_renoised": _shift(learned, a * real + s * eps, t),
                     "x0_off_subspace": _off_subspace(x0, q)})
    return rows


def print_bands(name: str, rows: list[dict]) -> None:
    t = np.array([r["t"] for r in rows])
    print(f"== {name}: {len(rows)} steps")
    print("band of t       steps " + " ".join(f"{c:>22}" for c in COLUMNS))
    for lo, hi in BANDS:
        m = (t >= lo) & ((t < hi) if hi < 1 else (t <= hi))
        if m.any():
            vals = [np.mean([rows[j][c] for j in np.where(m)[0]]) for c in COLUMNS]
            print(f"[{lo:.2f}, {hi:.2f}]  {m.sum():6d} " + " ".join(f"{v:+22.4f}" for v in vals))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("estimator", help="a learned estimator checkpoint for the runs' schedule")
    ap.add_argument("runs", nargs="*", default=["unguided"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    learned = NoiseLevelEstimator.load(args.estimator, device="cpu")
    data = load_data({"name": "digits", "side": 16})
    gen = torch.Generator().manual_seed(0)
    with open_trajectories(args.file) as f:
        subspace = SubspaceOracle(device="cpu").fit(data, f.run(args.runs[0]).schedule)
        for name in args.runs:
            print_bands(name, step_rows(f.run(name), learned, subspace, data, gen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
