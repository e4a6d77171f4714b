"""Bring your own model: a diffusers DDPM pipeline, recorded, estimated, guided and reported.

1. builds a small UNet2DModel and DDPMScheduler from config and trains them briefly on the
   built-in 16x16 digits (diffusers' own add_noise and the eps loss);
2. saves the pipeline (``save_pretrained``) and loads it back from local files, as
   ``noiseshift sample --model diffusers:DIR`` does, with a DDIM scheduler swapped in;
3. fits a learned noise-level estimator for ``vp-cosine``, the schedule diffusers' VP
   states are recorded in (docs/trajectory-format.md);
4. records an unguided run and an estimator-NAG run, same seed, into one trajectory file
   (`noiseshift.integrations.diffusers.record` / `guide`, hooked on ``pipe.scheduler.step``);
5. reads t' of every recorded state with the learned estimator and with the subspace oracle
   (an independent meter), writes a report and prints the shift of each run.

    python examples/diffusers_ddpm_digits.py --out ddpm-out          # tens of minutes on a CPU
    python examples/diffusers_ddpm_digits.py --out ddpm-out --tiny   # a smoke test, ~30 s

It also saves the training images as OUT/images.npy, for `noiseshift train-estimator --data`.
NOISESHIFT_TINY=1 has the effect of --tiny. Each stage prints a line with its time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from noiseshift.data import load_data
from noiseshift.estimation import estimate_file
from noiseshift.estimators import LearnedEstimator
from noiseshift.integrations.diffusers import guide, load_pipeline, record
from noiseshift.integrations.tiny import train_ddpm
from noiseshift.report import build_report, write_report
from noiseshift.tiny import enabled as tiny_enabled

DATA = {"name": "digits", "side": 16}
FULL = {"train_steps": 1500, "channels": (16, 32), "batch": 64, "estimator_steps": 800,
        "n": 256, "steps": 20}
TINY = {"train_steps": 60, "channels": (8, 16), "batch": 32, "estimator_steps": 40,
        "n": 32, "steps": 6}


STAGES = ("train the pipeline and the estimator", "record two runs", "estimate and report")
T0 = time.perf_counter()


def stage(k: int) -> None:
    """A line on stderr as stage k (0-based) starts: a log or a pipe sees progress too."""
    print(f"[{time.perf_counter() - T0:.0f}s] stage {k + 1}/{len(STAGES)}: {STAGES[k]}",
          file=sys.stderr, flush=True)


def build(out: Path, cfg: dict, seed: int) -> Path:
    """Train the pipeline and the estimator; save both under ``out``."""
    data = load_data(DATA)
    np.save(out / "images.npy", np.asarray(data.x, dtype=np.float32))
    pipe = train_ddpm(data, steps=cfg["train_steps"], batch_size=cfg["batch"],
                      channels=cfg["channels"], seed=seed)
    pipe.save_pretrained(out / "pipeline")
    print(f"trained a {sum(p.numel() for p in pipe.unet.parameters())}-parameter UNet2DModel "
          f"for {cfg['train_steps']} steps (final loss {pipe.training_losses[-1]:.3f}) -> "
          f"{out / 'pipeline'}")
    est = LearnedEstimator(steps=cfg["estimator_steps"], seed=seed).fit(data, "vp-cosine")
    return est.save(out / "estimator.pt")


def sample_runs(pipe, est, traj: Path, cfg: dict, scale: float, seed: int) -> list[str]:
    """The unguided run and the guided run, same seed, same subset: one file."""
    kw = {"batch_size": cfg["n"], "num_inference_steps": cfg["steps"], "output_type": "np"}
    names = []
    for w in (0.0, scale):
        with record(pipe, traj, data=DATA, seed=seed, overwrite=True) as rec, \
                guide(pipe, est, w):
            pipe(**kw, generator=torch.Generator().manual_seed(seed))
        names.append(rec.run)
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("ddpm-out"), help="output folder")
    ap.add_argument("--nag-scale", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny training (a smoke test)")
    args = ap.parse_args(argv)
    args.tiny = args.tiny or tiny_enabled()
    cfg = TINY if args.tiny else FULL
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    args.out.mkdir(parents=True, exist_ok=True)

    stage(0)
    est_path = build(args.out, cfg, args.seed)
    pipe = load_pipeline(args.out / "pipeline", scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    est = LearnedEstimator.load(est_path, device="cpu")
    traj = args.out / "trajectories.h5"
    traj.unlink(missing_ok=True)  # this script's own file: start clean
    stage(1)
    runs = sample_runs(pipe, est, traj, cfg, args.nag_scale, args.seed)
    print(f"recorded runs {runs} ({cfg['n']} samples x {cfg['steps']} DDIM steps) -> {traj}")

    stage(2)
    res = estimate_file(traj, [str(est_path), "subspace"], device="cpu")
    rep = build_report(traj, res.path, quality=not args.tiny)
    md = write_report(rep, args.out / "report", plot=False)
    cols = [c for c in ("run", "mean_abs_delta", "ind_mean_abs_delta", "fd")
            if c in rep.summary]
    print(rep.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mean_abs_delta: |t' - reference(t)| by the learned estimator; ind_: by the "
          f"subspace oracle. report -> {md}")
    print(f"[{time.perf_counter() - T0:.0f}s] done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
