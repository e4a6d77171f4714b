"""Numbers for issue 22 (`noiseshift tune`): tune's race against the full grid on the
default digits model, per seed, measured side by side in one run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_tune.py --save-grid /tmp/select/grid
        [--budget 16] [--n-final 2048] [--seeds 0,1,2]
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/bench_tune.py --grid /tmp/select/grid
        [--seeds 0,1,2] [--out /tmp/bench_tune.json]

--save-grid: every candidate at n_final on every seed; each candidate's per-sample features
(classifier space, one array per seed), model evaluations and sampling seconds go to
DIR/NAME.npz, the reference features to DIR/reference.npy. Every candidate shares the
per-sample noise, so the first n rows are what tune draws at n.
--replay: tune's race (the library's own code) and, beside it, the successive halving it
replaced (128 samples each, the best third doubles, 2 finalists at 1024; scaled to the
grid's n), replayed on the saved grid's features for each seed and each rotation of its
128-sample blocks (another draw order: another run tune could have made; 16 at n = 2048),
no sampling. Prints each rule's pick's FD over the grid's best and its cost over the
grid's, per seed and over all replays.
Default: `tune` (its defaults) on each seed, with its wall time and load; then, against the
saved grid of the same seed, the FD at n_final of tune's recommendation and of its best
finalist over the grid's best (target <= 1.05) and tune's model evaluations over the
grid's (target <= 0.25).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from noiseshift.analysis.quality import fd_difference, feature_space, frechet_distance
from noiseshift.analysis.statistics import Estimate
from noiseshift.data import load_data
from noiseshift.defaults import TUNE_N_FINAL
from noiseshift.pretrained import DEFAULT_DATA, default_estimator, default_model
from noiseshift.tuning import CANDIDATES, search, tune
from noiseshift.tuning.draws import Draws, draw
from noiseshift.tuning.search import BLOCK, Context


def save_grid(args, model, est, data, seeds) -> None:
    out = Path(args.save_grid)
    out.mkdir(parents=True, exist_ok=True)
    space = feature_space(data)
    np.save(out / "reference.npy", space.reference)
    ctx = Context(model, est, data, None, space, args.n_final, BLOCK, "cpu", 20, 0)
    for c in CANDIDATES:
        steps = c.steps_for(args.budget)
        if steps is None:
            continue
        d = Draws(c, steps, seeds)
        for s in seeds:
            draw(d, ctx, s, 0, args.n_final)
        np.savez(out / f"{c.name}.npz", **{f"s{s}": np.concatenate(d.feats[s]) for s in seeds},
                 steps=steps, rows=d.rows, samples=d.samples, seconds=d.seconds)
        print(f"{c.name}: {steps} steps, {d.rows / d.samples:.0f} model evaluations per "
              f"sample, {d.seconds:.0f} s", flush=True)


def load_grid(path, seed: int) -> dict:
    """{name: (FD at n_final, model evaluations per seed)} of the saved grid."""
    path = Path(path)
    ref = np.load(path / "reference.npy")
    out = {}
    for c in CANDIDATES:
        f = path / f"{c.name}.npz"
        if f.exists():
            z = np.load(f)
            feats = z[f"s{seed}"]
            evals = float(z["rows"]) / float(z["samples"]) * len(feats)
            out[c.name] = (frechet_distance(feats, ref), evals)
    return out


def one_seed(args, model, est, data, seed: int) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = tune(model, args.budget, data, seeds=(seed,), estimator=est, n_final=args.n_final,
               device="cpu")
    wall = time.perf_counter() - t0
    grid = load_grid(args.grid, seed)
    best = min(grid, key=lambda k: grid[k][0])
    cost = res.model_evals / sum(e for _, e in grid.values())
    rec, fin = res.recommended, res.best
    dfd = f" (dFD {rec.dfd.value:+.3f} [{rec.dfd.lo:+.3f}, {rec.dfd.hi:+.3f}])" if rec.dfd \
        else ""
    print(f"seed {seed}: tune {wall:.0f} s wall (load {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f}), plan {res.plan}; recommends {rec.name}{dfd}")
    for name, label in ((rec.name, "recommendation"), (fin.name, "best finalist")):
        print(f"  {label} {name}: grid FD {grid[name][0]:.3f} / grid's best {best} "
              f"{grid[best][0]:.3f} = {grid[name][0] / grid[best][0]:.3f} (target <= 1.05)")
    print(f"  model evaluations tune / grid = {res.model_evals} / "
          f"{sum(e for _, e in grid.values()):.0f} = {cost:.3f} (target <= 0.25)", flush=True)
    return {"seed": seed, "wall": wall, "load": load0, "tune": res.to_dict(),
            "grid_fd": {k: v[0] for k, v in grid.items()}, "grid_best": best,
            "ratio_recommended": grid[rec.name][0] / grid[best][0],
            "ratio_best_finalist": grid[fin.name][0] / grid[best][0], "cost": cost}


def _saved(path, seed: int):
    """(reference, {name: features of seed}, {name: model evaluations per sample})."""
    path = Path(path)
    feats, evals = {}, {}
    for c in CANDIDATES:
        if (path / f"{c.name}.npz").exists():
            z = np.load(path / f"{c.name}.npz")
            feats[c.name] = z[f"s{seed}"]
            evals[c.name] = float(z["rows"]) / float(z["samples"])
    return np.load(path / "reference.npy"), feats, evals


def replay_race(ref, feats, evals, n_final: int) -> tuple[str, str, float]:
    """tune's race on saved features: (its best finalist, its recommendation, model
    evaluations)."""
    def fake_draw(d, ctx, seed, lo, hi):
        d.feats[seed].append(feats[d.candidate.name][lo:hi])
        d.samples += hi - lo
        d.rows += round((hi - lo) * evals[d.candidate.name])

    def fake_score(d, base, ctx):
        f = d.features()
        fd = Estimate(*[frechet_distance(f, ref)] * 3)
        dfd = None if d is base else fd_difference(base.features(d.n), f, ref, n_boot=100)
        return {"fd": fd, "dfd": dfd, "precision": fd, "recall": fd, "drecall": None,
                "shift": None, "model_evals": 0.0, "s_per_sample": 0.0, "s_per_step": 0.0}

    real = search.draw, search.score
    search.draw, search.score = fake_draw, fake_score
    try:
        res = tune(SimpleNamespace(schedule=None, supports_null_t=True), 16, None,
                   candidates=tuple(c for c in CANDIDATES if c.name in feats),
                   estimator=object(), n_final=n_final, meter=None, device="cpu",
                   space=SimpleNamespace(label="saved", reference=ref))
    finally:
        search.draw, search.score = real
    return res.best.name, res.recommended.name, res.model_evals


def replay_halving(ref, feats, evals, plan=((128, 26), (256, 9), (512, 3), (1024, 2))):
    """The successive halving tune ran before the race, plain FD at each rung, its plan
    (made for n_final = 1024) scaled to the saved grid's n: (its best finalist, model
    evaluations)."""
    scale = len(next(iter(feats.values()))) / 1024
    plan = tuple((round(n * scale), k) for n, k in plan)
    base, *alive = feats
    n_of = dict.fromkeys(feats, 0)
    for r, (n, _) in enumerate(plan):
        for name in alive:
            n_of[name] = n
        if r + 1 < len(plan):
            alive = sorted(alive, key=lambda k: frechet_distance(feats[k][:n], ref))
            alive = alive[:plan[r + 1][1]]
    n_of[base] = plan[-1][0]
    pick = min([base, *alive], key=lambda k: frechet_distance(feats[k][:plan[-1][0]], ref))
    return pick, sum(n_of[k] * evals[k] for k in feats)


def replay(args, seeds) -> None:
    rows = []
    for seed in seeds:
        ref, feats, evals = _saved(args.grid, seed)
        n_final = len(next(iter(feats.values())))
        for rot in range(n_final // BLOCK):
            fv = {k: np.roll(v, -BLOCK * rot, axis=0) for k, v in feats.items()}
            truth = {k: frechet_distance(v, ref) for k, v in fv.items()}
            best = min(truth.values())
            grid = sum(n_final * e for e in evals.values())
            fin, rec, cost = replay_race(ref, fv, evals, n_final)
            old, old_cost = replay_halving(ref, fv, evals)
            line = [truth[fin] / best, truth[rec] / best, cost / grid,
                    truth[old] / best, old_cost / grid]
            print(f"seed {seed} rotation {rot}: race best finalist {fin} {line[0]:.3f} x the "
                  f"grid's best, recommends {rec} {line[1]:.3f} x, cost {line[2]:.3f} x; "
                  f"halving {old} {line[3]:.3f} x, cost {line[4]:.3f} x", flush=True)
            rows.append(line)
    rows = np.array(rows)
    for i, rule in ((0, "race, best finalist"), (1, "race, recommendation"),
                    (3, "halving, best finalist")):
        r, c = rows[:, i], rows[:, 2 if i < 3 else 4]
        print(f"{rule}: over {len(r)} replays FD ratio mean {r.mean():.3f}, max {r.max():.3f}, "
              f"<= 1.05 in {np.sum(r <= 1.05)}; cost mean {c.mean():.3f}, max {c.max():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--n-final", type=int, default=TUNE_N_FINAL)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--save-grid", metavar="DIR", help="draw the full grid into DIR")
    ap.add_argument("--grid", metavar="DIR", help="a grid saved by --save-grid (same budget "
                    "and n-final)")
    ap.add_argument("--replay", action="store_true", help="replay the race and the old "
                    "halving on the saved --grid, no sampling")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", "/tmp/bench_tune.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.replay:
        replay(args, seeds)
        return
    model, est = default_model(device="cpu"), default_estimator(device="cpu")
    data = load_data(DEFAULT_DATA)
    if args.save_grid:
        save_grid(args, model, est, data, seeds)
        return
    if not args.grid:
        ap.error("pass --grid DIR (a grid saved by --save-grid)")
    out = [one_seed(args, model, est, data, s) for s in seeds]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
