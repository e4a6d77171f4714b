"""Numbers for issue 22 (`noiseshift tune`): tune's successive halving against the full grid
on the default digits model, and its pick against Euler-Maruyama unguided on more seeds.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_tune.py [--budget 16] [--seed 0]
        [--n-final 1024] [--check-seeds 1,2] [--out /tmp/bench_tune.json]

1. `tune` (the defaults: n_start 128, keep 1/3, 2 finalists, n_final) on --seed; wall time.
2. The grid: every candidate at n_final on the same seed (tune with n_start = n_final,
   keep = 1). Same per-sample noise, so tune's samples are a prefix of the grid's.
3. tune's recommendation against the baseline (Euler-Maruyama at the budget, unguided) on
   each --check-seeds at n_final.
Prints: tune's pick and the grid's best FD (ratio; target <= 1.05), the cost ratio
(samples x model evaluations, and sampling seconds; target <= 1/4), and per seed the pick's
dFD (paired 95% CI), mean |shift| change by the subspace meter and recall change.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import numpy as np
import torch

from noiseshift.analysis.quality import feature_space, frechet_distance, kid
from noiseshift.data import load_data
from noiseshift.pretrained import DEFAULT_DATA, default_estimator, default_model
from noiseshift.tuning import CANDIDATES, tune
from noiseshift.tuning.draws import Draws, draw
from noiseshift.tuning.search import BLOCK, Context, _round


def _sampling_seconds(res) -> float:
    return sum(r.s_per_sample * r.n for r in res.rows)


def _line(row, base) -> str:
    # against the baseline's FD at the same n (a row may stop at an earlier rung)
    pct = 100 * row.dfd.value / (row.fd.value - row.dfd.value) if row.dfd else 0.0
    sh = 100 * (row.shift.value / base.shift.value - 1) if row.shift else float("nan")
    dfd = f"{row.dfd:+.3f}" if row.dfd else "-"
    drec = f"{row.drecall:+.3f}" if row.drecall else "-"
    return (f"{row.name:16} steps {row.steps:3} n {row.n:5} FD {row.fd.value:6.3f} "
            f"dFD {dfd} ({pct:+.0f}%) |shift| {row.shift.value:.4f} ({sh:+.0f}%) "
            f"recall {row.recall.value:.3f} drecall {drec} "
            f"{1e3 * row.s_per_step:.3f} ms/step")


def _compare(res, mine: dict, grid: dict) -> None:
    """tune's pick against the grid's best FD, and the two costs."""
    rows = {r["name"]: r for r in grid["rows"]}
    best = min(grid["rows"], key=lambda r: r["fd"]["value"])
    pick = rows[res.recommended.name]
    secs = sum(r["s_per_sample"] * r["n"] for r in grid["rows"])
    print(f"grid's best {best['name']} FD {best['fd']['value']:.3f}; tune's pick "
          f"{pick['name']} FD {pick['fd']['value']:.3f} in the grid = "
          f"{pick['fd']['value'] / best['fd']['value']:.3f} x the best (target <= 1.05)")
    print(f"cost of tune / grid: model evaluations {mine['model_evals']}/"
          f"{grid['model_evals']} = {mine['model_evals'] / grid['model_evals']:.3f}; "
          f"samples {mine['samples']}/{grid['samples']} = "
          f"{mine['samples'] / grid['samples']:.3f}; sampling seconds "
          f"{_sampling_seconds(res) / secs:.3f}; wall {mine['wall']:.0f} s / "
          f"{grid['wall']:.0f} s = {mine['wall'] / grid['wall']:.3f} (target <= 0.25)")


def _extend(grid: dict, model, data, args, common) -> dict:
    """An earlier grid with the candidates added since drawn now (each candidate's samples
    do not depend on the others', so the rows are the ones a new grid would have)."""
    have = {r["name"] for r in grid["rows"]}
    missing = [c for c in CANDIDATES if c.name not in have]
    if not missing:
        return grid
    t0 = time.perf_counter()
    extra = tune(model, args.budget, data, seeds=(args.seed,), n_start=args.n_final,
                 keep=1.0, candidates=(CANDIDATES[0], *missing), **common)
    base = extra.baseline
    rows = grid["rows"] + [r.to_dict() for r in extra.rows if r is not base]
    print(f"grid extended by {[c.name for c in missing]} in "
          f"{time.perf_counter() - t0:.0f} s")
    return {**grid, "rows": rows, "wall": grid["wall"] + time.perf_counter() - t0,
            "samples": grid["samples"] + extra.samples - base.n,
            "model_evals": grid["model_evals"] + extra.model_evals
            - round(base.model_evals * base.n)}


SCREENED = ("heun", "em-g0.5", "em-g1+step1.5", "em-g1", "em+step3", "euler", "em",
            "ddim-eta1", "em+tshift", "em+cfcal0.5")


def _jackknife_fd(f, ref) -> float:
    n = len(f)
    loo = [frechet_distance(np.delete(f, i, 0), ref) for i in range(n)]
    return n * frechet_distance(f, ref) - (n - 1) * float(np.mean(loo))


def _pc_fd(f, p, mu, ref) -> float:
    return frechet_distance((f - mu) @ p, (ref - mu) @ p)


def screen(args) -> None:
    """Spearman's rank correlation, over `SCREENED`, between statistics of each candidate's
    first n samples and its FD at n-final in the grid."""
    from scipy.stats import spearmanr

    with open(args.grid_json) as f:
        truth = {r["name"]: r["fd"]["value"] for r in json.load(f)["grid"]["rows"]}
    torch.set_num_threads(1)
    model, est = default_model(device="cpu"), default_estimator(device="cpu")
    data = load_data(DEFAULT_DATA)
    space = feature_space(data)
    ctx = Context(model, est, data, None, space, _round(args.n_final, BLOCK), BLOCK, "cpu",
                  20, 0)
    feats = {}
    for c in CANDIDATES:
        if c.name in SCREENED:
            d = Draws(c, c.steps_for(args.budget), (args.seed,))
            draw(d, ctx, args.seed, 0, max(args.screen))
            feats[c.name] = d.features()
    ref, names = space.reference, list(feats)
    w, v = np.linalg.eigh(np.cov(ref, rowvar=False))
    v, mu = v[:, np.argsort(w)[::-1]], ref.mean(0)
    stats = {"FD": lambda f: frechet_distance(f, ref),
             "KID": lambda f: kid(f, ref, n_boot=20).value,
             "jackknife FD": lambda f: _jackknife_fd(f, ref)}
    for k in (4, 8, 16, 32):
        stats[f"FD, top {k} PCs"] = partial(_pc_fd, p=v[:, :k], mu=mu, ref=ref)
    for n in args.screen:
        for label, stat in stats.items():
            rho = spearmanr([truth[x] for x in names], [stat(feats[x][:n]) for x in names])[0]
            print(f"n = {n:4d}  {label:16} Spearman {rho:+.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-final", type=int, default=1024)
    ap.add_argument("--check-seeds", default="1,2")
    ap.add_argument("--n-start", type=int, default=128)
    ap.add_argument("--keep", type=float, default=1 / 3)
    ap.add_argument("--finalists", type=int, default=2)
    ap.add_argument("--grid-json", help="reuse the grid of an earlier run's --out (same "
                    "seed, budget and n-final) instead of drawing it again")
    ap.add_argument("--screen", type=int, nargs="*", metavar="N", help="instead: how well "
                    "each small-n statistic ranks the --grid-json candidates against their "
                    "FD at n-final (Spearman), at these n (e.g. 128 256)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", "/tmp/bench_tune.json"))
    args = ap.parse_args()
    if args.screen:
        screen(args)
        return
    torch.set_num_threads(1)
    model, est = default_model(device="cpu"), default_estimator(device="cpu")
    data = load_data(DEFAULT_DATA)
    common = dict(estimator=est, n_final=args.n_final, device="cpu")
    print(f"load {os.getloadavg()[0]:.1f} at start", flush=True)
    out = {"args": vars(args)}
    t0 = time.perf_counter()
    res = tune(model, args.budget, data, seeds=(args.seed,), n_start=args.n_start,
               keep=args.keep, finalists=args.finalists, **common)
    tune_wall = time.perf_counter() - t0
    print(f"tune: {tune_wall:.0f} s wall, {res.samples} samples, plan {res.plan}, load "
          f"{os.getloadavg()[0]:.1f}; recommends {res.recommended.name}: {res.command()}")
    for row in res.rows:
        print(" ", _line(row, res.baseline))
    out["tune"] = {**res.to_dict(), "wall": tune_wall}
    pick = res.recommended.candidate
    if args.grid_json:
        with open(args.grid_json) as f:
            out["grid"] = _extend(json.load(f)["grid"], model, data, args, common)
    else:
        t0 = time.perf_counter()
        grid = tune(model, args.budget, data, seeds=(args.seed,), n_start=args.n_final,
                    keep=1.0, **common)
        out["grid"] = {**grid.to_dict(), "wall": time.perf_counter() - t0}
        print(f"grid: {out['grid']['wall']:.0f} s wall, load {os.getloadavg()[0]:.1f}")
        for row in grid.rows:
            print(" ", _line(row, grid.baseline))
    _compare(res, out["tune"], out["grid"])
    for seed in [int(s) for s in args.check_seeds.split(",") if s]:
        chk = tune(model, args.budget, data, seeds=(seed,), n_start=args.n_final, keep=1.0,
                   candidates=(CANDIDATES[0], pick) if pick is not CANDIDATES[0] else
                   (CANDIDATES[0],), **common)
        print(f"seed {seed}:")
        for row in chk.rows:
            print(" ", _line(row, chk.baseline))
        out[f"check-{seed}"] = chk.to_dict()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
