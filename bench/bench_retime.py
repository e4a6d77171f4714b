"""The shift-aware grid on a diffusers DDPM (issue 22): audit's mean |shift| and FD.

    PYTHONPATH=.:bench python bench/bench_retime.py --grid grid.json --model DIR \
        --n 1000 --seeds 0,1,2

``grid.json`` is `noiseshift retime --data digits --scheduler diffusers:DDIMScheduler
--spacing trailing --steps 10` output (with ``--relabel``: the static relabel): its
iterate 0 is DDIM trailing itself, so the audit columns compare the chosen grid (or labels)
with trailing spacing on the same perfect model and seed. Then the pipeline at DIR (a
DDPMPipeline on the built-in digits, e.g. the DDPM testbed) is sampled with DDIM trailing
and with the file's diffusers grid as `sample --timesteps grid.json` passes it (DDIM's
update, run as first-order DPM-Solver++ with those timesteps; with "relabel", the UNet gets
the relabelled timesteps), same seed and initial noise, and FD in the digits classifier's
feature space is compared with a paired bootstrap CI (`fd_difference`).
"""

from __future__ import annotations

import argparse
import json

import torch

from noiseshift.analysis.quality import fd_difference, feature_space, frechet_distance
from noiseshift.data import load_data
from noiseshift.integrations.diffusers import load_pipeline
from noiseshift.integrations.pipeline_runs import pipeline_run
from noiseshift.pretrained import DEFAULT_DATA


def draw(folder: str, n: int, seed: int, grid=None) -> torch.Tensor:
    """n samples (N, C, H, W) of the pipeline with DDIM trailing 10, or the given grid."""
    pipe = load_pipeline(folder, scheduler="ddim", spacing="trailing", progress=False)
    pipe.set_progress_bar_config(disable=True)
    spec, backend = pipeline_run(pipe, n=n, steps=10, seed=seed, grid=grid)
    last, images = backend.draw(spec)
    return images if images is not None else last


def audit_again(body: dict, seed: int, n: int | None = None) -> None:
    """Trailing and the file's grid (or relabel) audited at another seed (and n: default
    the file's), same perfect model (`noiseshift retime --data digits`: 8 components, rank
    8, fitted with seed 0)."""
    from noiseshift.analysis.audit import fit_mixture
    from noiseshift.integrations.retime_diffusers import relabel_scheduler, retime_scheduler

    mix = fit_mixture(load_data(DEFAULT_DATA), 8, 8, 0)
    run = relabel_scheduler if body.get("relabel") else retime_scheduler
    n = n or body["n"]
    kw = dict(spacing=body["spacing"], steps=len(body["timesteps"]) - 1, n=n, seed=seed,
              iterations=0)
    a = run(mix, "DDIMScheduler", **kw).audits[0].mean_abs
    b = run(mix, "DDIMScheduler", start=body["timesteps"], **kw).audits[0].mean_abs
    print(f"audit seed {seed} n={n}: trailing {a.value:.4f} [{a.lo:.4f}, {a.hi:.4f}], "
          f"file's {b.value:.4f} [{b.lo:.4f}, {b.hi:.4f}] ({100 * (b.value / a.value - 1):+.0f}%)",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", required=True)
    p.add_argument("--model", required=True, help="a DDPMPipeline folder")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--audit-seeds", default="", help="also audit trailing and the file's "
                   "grid (or labels) on the perfect model at these seeds (out of sample)")
    p.add_argument("--audit-n", type=int, help="samples of those audits (default: the "
                   "file's n; a mean |shift| near the noise floor reads high at small n)")
    a = p.parse_args()
    body = json.load(open(a.grid))
    its = body["iterations"]
    base, best = its[0]["mean_abs_shift"], its[body["best_iteration"]]["mean_abs_shift"]
    print(f"audit (perfect model, n={body['n']}): mean |shift| trailing {base['value']:.4f} "
          f"[{base['lo']:.4f}, {base['hi']:.4f}], retimed {best['value']:.4f} "
          f"[{best['lo']:.4f}, {best['hi']:.4f}] "
          f"({100 * (best['value'] / base['value'] - 1):+.0f}%)")
    for seed in (int(s) for s in a.audit_seeds.split(",") if s):
        audit_again(body, seed, a.audit_n)
    space = feature_space(load_data(DEFAULT_DATA))
    grid = body["diffusers"]
    rows = []
    for seed in (int(s) for s in a.seeds.split(",") if s):
        fa = space(draw(a.model, a.n, seed))
        fb = space(draw(a.model, a.n, seed, grid))
        d = fd_difference(fa, fb, space.reference)
        fd_a = frechet_distance(fa, space.reference)
        row = {"seed": seed, "n": a.n, "fd_trailing": fd_a,
               "fd_retimed": frechet_distance(fb, space.reference),
               "dfd": [d.value, d.lo, d.hi], "dfd_pct": 100 * d.value / fd_a, "grid": grid}
        rows.append(row)
        print(f"seed {seed} n={a.n}: FD trailing {fd_a:.2f}, retimed {row['fd_retimed']:.2f}, "
              f"dFD {d.value:+.2f} [{d.lo:+.2f}, {d.hi:+.2f}] ({row['dfd_pct']:+.0f}%)",
              flush=True)


if __name__ == "__main__":
    main()
