"""Estimator accuracy: learned vs the exact oracle vs the baselines, and the injected-noise check.

    python bench/bench_estimator_accuracy.py                 # all three parts
    python bench/bench_estimator_accuracy.py --parts gmm,digits --json

gmm: a learned MLP estimator trained on the 64-d Gaussian mixture (`make_gmm(dim=64)`),
linear schedule, against the exact oracle (posterior mean of the exact p(t|x)), variance
matching and wavelet MAD, all on the same held-out states (t ~ U[0, 1], x0 from the held-out
split). Target: learned MAE <= 1.2x the oracle's.

digits: the built-in default recipe (`pretrained.DEFAULT_ESTIMATOR`, trained here from
scratch and timed) on 16x16 digits, linear, against variance matching, wavelet MAD and the
subspace oracle. Target: learned MAE <= 1/3 of variance matching's.

inject: add e ~ N(0, s^2 I) to true x_t of a mixture and compare the measured shift
(exact oracle, calibrated, minus its reference) with the exact inversion
sigma(t')^2 = sigma_t^2 + s^2, over t in [0.2, 0.9] and s in {0.05, 0.1, 0.2}; R^2 per data
kind, dimension and schedule, and the worst cells. For VP schedules the log-SNR inversion
alpha_t^2 / (sigma_t^2 + s^2) = alpha(t')^2 / sigma(t')^2 is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from noiseshift.data import Dataset, GaussianMixture, load_digits, make_gmm
from noiseshift.estimators import ExactOracle, LearnedEstimator, forward_noise
from noiseshift.estimators.accuracy import compare
from noiseshift.runtime import generator
from noiseshift.schedules import get_schedule


def table(acc: dict) -> str:
    names = list(acc["mae"])
    lines = ["  t band      " + "".join(f"{n:>10}" for n in names)]
    for k, (lo, hi) in enumerate(acc["bands"]):
        lines.append(f"  [{lo:.1f}, {hi:.1f})  " + "".join(
            f"{acc['mae'][n][k]:10.4f}" for n in names))
    lines.append("  all         " + "".join(f"{acc['overall'][n]:10.4f}" for n in names))
    return "\n".join(lines)


def part_gmm(args) -> dict:
    data = make_gmm(dim=64)
    t0 = time.perf_counter()
    est = LearnedEstimator(steps=args.gmm_steps, seed=args.seed).fit(data, "linear")
    secs = time.perf_counter() - t0
    acc = compare(est, data, n=args.n, seed=args.seed + 1,
                  baselines=["oracle", "variance", "wavelet"])
    o = acc["overall"]
    return {"accuracy": acc, "train_seconds": secs, "steps": args.gmm_steps,
            "params": est.num_parameters(), "learned_over_oracle": o["learned"] / o["oracle"]}


def part_digits(args) -> dict:
    from noiseshift.pretrained import DEFAULT_ESTIMATOR

    data = load_digits(16)
    t0 = time.perf_counter()
    est = LearnedEstimator(**{**DEFAULT_ESTIMATOR, "seed": args.seed}).fit(data, "linear")
    secs = time.perf_counter() - t0
    acc = compare(est, data, n=args.n, seed=args.seed + 1,
                  baselines=["subspace", "variance", "wavelet"])
    o = acc["overall"]
    return {"accuracy": acc, "train_seconds": secs, "recipe": DEFAULT_ESTIMATOR,
            "params": est.num_parameters(),
            "learned_over_variance": o["learned"] / o["variance"],
            "learned_over_subspace": o["learned"] / o["subspace"]}


def mixture(kind: str, dim: int) -> Dataset:
    """'image-like': make_gmm (per-dimension second moment ~0.7); 'small-variance': the same
    modes scaled to ~0.1."""
    if kind == "image-like":
        return make_gmm(dim=dim)
    base = GaussianMixture.random(dim, 8, 0.1, seed=0)
    mix = GaussianMixture(base.means * 0.3 / 0.8, 0.1)
    x, k = mix.sample(4096, torch.Generator().manual_seed(1))
    return Dataset(x=x, labels=k, spec={"name": "small-gmm", "dim": dim}, mixture=mix)


def injected(data: Dataset, schedule: str, n: int, seed: int) -> dict:
    sch = get_schedule(schedule)
    est = ExactOracle().fit(data, sch)
    g = generator(seed)
    cells = []
    for t in np.linspace(0.2, 0.9, 8):
        for s in (0.05, 0.1, 0.2):
            x0 = data.x[torch.randint(len(data), (n,), generator=g)]
            x = forward_noise(x0, torch.full((n,), t, dtype=torch.float64), sch, g)
            x = x + s * torch.randn(x.shape, generator=g)
            measured = est.predict(x)[0].mean().item() - est.reference(t)
            by_sigma = float(sch.t_from_sigma(np.hypot(sch.sigma(t), s))) - t
            lam = np.log(sch.alpha(t) ** 2 / (sch.sigma(t) ** 2 + s**2))
            by_snr = float(sch.t_from_log_snr(lam)) - t
            cells.append({"t": float(t), "s": s, "measured": measured, "sigma_inversion": by_sigma,
                          "log_snr_inversion": by_snr})
    m = np.array([c["measured"] for c in cells])

    def r2(key):
        p = np.array([c[key] for c in cells])
        return float(1 - ((m - p) ** 2).sum() / ((m - m.mean()) ** 2).sum())

    worst = sorted(cells, key=lambda c: -abs(c["measured"] - c["sigma_inversion"]))[:3]
    return {"r2_sigma": r2("sigma_inversion"), "r2_log_snr": r2("log_snr_inversion"),
            "worst": worst, "cells": cells}


def part_inject(args) -> dict:
    out = {}
    for kind in ("small-variance", "image-like"):
        for dim in (64, 256):
            data = mixture(kind, dim)
            for schedule in ("linear", "vp-cosine"):
                out[f"{kind} d={dim} {schedule}"] = injected(data, schedule, args.inject_n,
                                                            args.seed)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="gmm,digits,inject")
    ap.add_argument("--n", type=int, default=8192, help="held-out states for the MAE tables")
    ap.add_argument("--gmm-steps", type=int, default=2000)
    ap.add_argument("--inject-n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parts = args.parts.split(",")
    res = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if "gmm" in parts:
        res["gmm"] = part_gmm(args)
    if "digits" in parts:
        res["digits"] = part_digits(args)
    if "inject" in parts:
        res["inject"] = part_inject(args)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"torch threads {res['torch_threads']}, {res['cpu_count']} CPUs")
    if "gmm" in res:
        g = res["gmm"]
        print(f"\n64-d Gaussian mixture, linear: held-out MAE of t ({args.n} states; learned "
              f"MLP {g['params']:,} params, {g['steps']} steps, {g['train_seconds']:.0f} s)")
        print(table(g["accuracy"]))
        print(f"  learned / oracle = {g['learned_over_oracle']:.3f}   (target <= 1.2)")
    if "digits" in res:
        d = res["digits"]
        print(f"\n16x16 digits, linear, default recipe: held-out MAE of t ({args.n} states; "
              f"{d['params']:,} params, trained in {d['train_seconds']:.0f} s)")
        print(table(d["accuracy"]))
        print(f"  learned / variance = {d['learned_over_variance']:.3f}   (target <= 0.333);"
              f"  learned / subspace = {d['learned_over_subspace']:.3f}")
        print(f"  blind zones: {d['accuracy']['blind_zones']}")
    if "inject" in res:
        print("\ninjected noise e ~ N(0, s^2 I) on true x_t, exact oracle, t in [0.2, 0.9]:")
        print(f"  {'data':34} {'R2 sigma-inv':>13} {'R2 logSNR-inv':>14}   worst cells "
              f"(t, s: measured / sigma-inversion)")
        for key, r in res["inject"].items():
            worst = "; ".join(f"{c['t']:.1f},{c['s']}: {c['measured']:+.3f}/"
                              f"{c['sigma_inversion']:+.3f}" for c in r["worst"])
            print(f"  {key:34} {r['r2_sigma']:13.3f} {r['r2_log_snr']:14.3f}   {worst}")


if __name__ == "__main__":
    main()
