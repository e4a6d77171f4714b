"""Guidance: step cost, the shift it removes on the exact mixture, and what every NAG mode
does to the default digits model's shift and samples.

    python bench/bench_guidance.py                 # cost: NAG and CFG+NAG vs unguided
    python bench/bench_guidance.py --mixture       # exact-score NAG on Gaussian mixtures
    python bench/bench_guidance.py --digits --settings unguided,estimator-step:1.5,cf:1 \
        --seeds 0,1,2 --n 1000 --out rows.jsonl    # digits; see guidance_digits.py
    python bench/bench_guidance.py --digits --baseline cfg:1 --settings cfg:1+cf:1 ...
    python bench/bench_guidance.py --testbed digits-weak --settings unguided,estimator-step:1.5,\
        eps:1.005,ts:0.2-0.3 --seeds 0,1,2 --n 1000 --out rows.jsonl  # noiseshift.testbeds
    python bench/bench_guidance.py --report rows.jsonl --figure quality.png

Cost: one forward step of the default digits UNet (the cached trained one if present,
else the same architecture untrained: cost does not depend on the weights), unguided,
classifier-free NAG (2 branches), CFG + NAG (3 branches; each also with all branches in
one model call, as before `classifier_free.BRANCH_BLOCK`) and estimator-gradient NAG, at
the same batch (512), interleaved, median of repeats; also as `sample` calls the model (in
blocks of `sampling.SAMPLE_BLOCK` rows). Run with OMP_NUM_THREADS=1: with
2 threads on a shared 2-core machine the unguided pass is the one that parallelises worst,
which flatters every ratio. Targets: NAG <= 1.5x, CFG+NAG <= 2.0x.

Mixture: Euler-Maruyama (diffusion 2t, 16 steps) on the exact mixture denoiser, every NAG
mode with the exact oracle estimator, per scale and guidance interval. The shift is the exact
posterior's calibrated reading minus its reading of true x_t at the same t (the toolkit's
delta), averaged over all steps and over the late steps (t <= 0.5). Quality: the energy
distance to true samples (0 is perfect) and the dispersion about the nearest mode (1 for
true data; the exact likelihood would reward collapse onto the modes, so it is not used).

Digits (guidance_digits.py): each setting against the unguided run of the same seed, shift
by both meters, FD (classifier features and pixel PCA), precision, recall and accuracy, all
with paired-bootstrap 95% CIs; --report prints one table and draws quality against scale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from guidance_digits import bench_digits
from guidance_report import figure, load_rows, table, testbed_table

from noiseshift.data import MixtureDenoiser, load_data, make_gmm
from noiseshift.defaults import DEFAULT_DATA, DEFAULT_DENOISER, DEFAULT_SCHEDULE, cache_dir
from noiseshift.estimators import ExactOracle, NoiseLevelEstimator
from noiseshift.guidance import GuidanceWarning, build_guidance, classifier_free
from noiseshift.models import build_model, load_model
from noiseshift.pretrained import default_model_path
from noiseshift.sampling import SAMPLE_BLOCK, Blocked, sample
from noiseshift.training import denoiser_config

# -- cost -----------------------------------------------------------------------------------

def _default_unet():
    path = default_model_path()
    if path.exists():
        return load_model(path), "cached default (trained)"
    recipe = {k: DEFAULT_DENOISER[k] for k in ("arch", "channels", "prediction", "t_dropout",
                                                "class_dropout")}
    cfg = denoiser_config(load_data(DEFAULT_DATA), DEFAULT_SCHEDULE, conditional=True, **recipe)
    torch.manual_seed(0)
    return build_model(cfg).eval(), "default architecture, untrained"


class _FixedPosterior:
    """A stand-in estimator with the learned one's cost profile is not needed for the
    ratio targets; this one differentiates a small conv net so the gradient pass is real."""

    def __init__(self, shape, bins=100):
        c = shape[0]
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(c, 32, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, bins))
        self.grid = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins

    def log_posterior(self, x):
        return self.grid, torch.log_softmax(self.net(x).double(), -1)


def _estimator_for_cost(shape):
    cached = sorted(cache_dir().glob("estimator-*.pt")) if cache_dir().exists() else []
    if cached:
        return NoiseLevelEstimator.load(cached[0]), f"cached {cached[0].name}"
    return _FixedPosterior(shape), "small conv posterior net (untrained)"


def _one_call(guided):
    """``guided`` with its stacked branches in one model call, as before BRANCH_BLOCK."""
    def call(x, t, y):
        block, classifier_free.BRANCH_BLOCK = classifier_free.BRANCH_BLOCK, x.shape[0] * 3
        try:
            return guided(x, t, y)
        finally:
            classifier_free.BRANCH_BLOCK = block
    return call


def bench_cost(batch: int, repeats: int) -> dict:
    model, what = _default_unet()
    est, est_what = _estimator_for_cost(tuple(model.config["shape"]))
    shape = tuple(model.config["shape"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g)
    t = torch.full((batch,), 0.5)
    y = torch.randint(model.num_classes, (batch,), generator=g)
    def nag(mode, **kw):
        return build_guidance(model, nag_scale=1.0, nag_mode=mode, estimator=est, **kw)[0]

    variants = {
        "unguided": model,
        "nag cf": nag("cf"),
        "nag cf, one call": _one_call(nag("cf")),
        "cfg+nag cf": nag("cf", cfg_scale=1.0),
        "cfg+nag cf, one call": _one_call(nag("cf", cfg_scale=1.0)),
        "unguided, sampler blocks": Blocked(model, SAMPLE_BLOCK),
        "nag cf, sampler blocks": Blocked(nag("cf"), SAMPLE_BLOCK),
        "cfg+nag cf, sampler blocks": Blocked(nag("cf", cfg_scale=1.0), SAMPLE_BLOCK),
        "nag estimator": nag("estimator"),
        "nag estimator-noise": nag("estimator-noise"),
        "nag estimator-step": nag("estimator-step"),
        "cfg+nag estimator-step": nag("estimator-step", cfg_scale=1.0),
        "nag cf-calibrated": nag("cf-calibrated"),
        "nag estimator-reading": nag("estimator-reading"),
    }
    times = {k: [] for k in variants}
    with torch.no_grad():
        for m in variants.values():  # warm-up
            m(x, t, y)
        for _ in range(repeats):
            for k, m in variants.items():  # interleaved, so load changes hit all alike
                t0 = time.perf_counter()
                m(x, t, y)
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["unguided"]
    print(f"model: {what}; estimator: {est_what}; batch {batch}, {repeats} repeats, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<26}{'ms/step':>10}{'x unguided':>12}")
    for k, v in med.items():
        print(f"{k:<26}{1000 * v:>10.2f}{v / base:>12.2f}")
    print(f"targets: nag cf <= 1.5x -> {med['nag cf'] / base:.2f}x; "
          f"cfg+nag cf <= 2.0x -> {med['cfg+nag cf'] / base:.2f}x")
    blocked = med["unguided, sampler blocks"]
    print(f"as `sample` calls them ({SAMPLE_BLOCK}-row blocks): nag cf "
          f"{med['nag cf, sampler blocks'] / blocked:.2f}x, cfg+nag cf "
          f"{med['cfg+nag cf, sampler blocks'] / blocked:.2f}x the blocked unguided step")
    return {k: v / base for k, v in med.items()}


# -- mixture experiment ---------------------------------------------------------------------

def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|A-B| - E|A-A'| - E|B-B'| (0 for equal distributions)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean()
                 - torch.cdist(b, b).mean())


def dispersion(mix, x: torch.Tensor) -> float:
    """Mean squared distance to the nearest component mean per dimension, over c^2
    (1 for true data, < 1 when samples collapse onto the modes)."""
    d2 = torch.cdist(x.double().flatten(1), mix.means).min(1).values ** 2
    return float(d2.mean() / mix.dim / mix.stds.pow(2).mean())


def run_mixture(dim: int, n: int, steps: int, seed: int, settings, components: int = 8):
    data = make_gmm(dim=dim, components=components, std=0.25, seed=0, n=4096)
    mix = data.mixture
    model = MixtureDenoiser(mix, "linear")
    oracle = ExactOracle(calib_samples=128).fit(data, "linear")
    x_true, _ = mix.sample(n, torch.Generator().manual_seed(seed + 99))
    rows = []
    for mode, w, interval in settings:
        guided, _ = build_guidance(model, nag_scale=w, nag_mode=mode, estimator=oracle,
                                   interval=interval)
        states: list = []
        out = sample(guided, n, sampler="euler-maruyama", steps=steps, seed=seed,
                     callback=lambda info, s=states: s.append((info["t"], info["x"].clone())))
        deltas = []
        for t, x in states:
            t_hat = oracle.predict(x)[0]
            deltas.append((t, float(t_hat.mean()) - float(oracle.reference(t))))
        late = [d for t, d in deltas if t <= 0.5]
        rows.append({"dim": dim, "mode": mode if w else "unguided", "w": w,
                     "interval": interval, "delta": statistics.mean(d for _, d in deltas),
                     "abs_delta": statistics.mean(abs(d) for _, d in deltas),
                     "late_delta": statistics.mean(late), "first_delta": deltas[1][1],
                     "energy": energy_distance(out, x_true), "disp": dispersion(mix, out)})
    return rows


def bench_mixture(dims, n, steps, seed, modes, scales, intervals):
    settings = [("estimator", 0.0, None)] + [
        (m, w, iv) for m in modes for iv in intervals for w in scales if w]
    print(f"Euler-Maruyama (diffusion 2t), {steps} steps, n={n}, seed {seed}; exact mixture "
          f"(8 components, std 0.25); delta read by the exact oracle (calibrated)")
    print(f"{'d':>4} {'mode':<16}{'w':>5} {'interval':<10}{'delta':>8}{'|delta|':>9}"
          f"{'late':>8}{'step1':>8}{'energy':>8}{'disp':>7}")
    out = []
    for d in dims:
        for r in run_mixture(d, n, steps, seed, settings):
            lo, hi = r["interval"] or (0, 0.8)
            iv = "-" if r["w"] == 0 else f"{lo:g}-{hi:g}"
            print(f"{r['dim']:>4} {r['mode']:<16}{r['w']:>5g} {iv:<10}{r['delta']:>+8.4f}"
                  f"{r['abs_delta']:>9.4f}{r['late_delta']:>+8.4f}{r['first_delta']:>+8.4f}"
                  f"{r['energy']:>8.4f}{r['disp']:>7.3f}")
            sys.stdout.flush()
            out.append(r)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", action="store_true", help="run the mixture experiment")
    p.add_argument("--digits", action="store_true", help="every setting on the default "
                   "digits model (trains and caches it on first use)")
    p.add_argument("--testbed", default=None, help="every setting on a testbed of "
                   "noiseshift.testbeds (its model, sampler, steps, meter, metrics)")
    p.add_argument("--settings", default="unguided,estimator:1,cf:1,cf-read:0.5,eps:1.005,"
                   "ts:0.2-0.3", help="for --digits: comma-separated, e.g. estimator:1.5@0.2-0.8,"
                   "cfg:1+cf-calibrated:1~cap4 (see guidance_digits.parse_setting)")
    p.add_argument("--baseline", default="unguided", help="for --digits: the setting every "
                   "other is compared with (paired), e.g. cfg:1")
    p.add_argument("--out", default=None, help="for --digits: append result rows (JSON lines)")
    p.add_argument("--report", nargs="+", default=None, help="rows files (JSON lines) from "
                   "--digits --out: print one markdown table (with --testbed: the testbed "
                   "table, exact metrics and cost)")
    p.add_argument("--figure", default=None, help="with --report: quality against scale, "
                   "every mode, as a PNG")
    p.add_argument("--model", default=None, help="for --digits: a denoiser checkpoint "
                   "instead of the built-in default")
    p.add_argument("--seeds", default="0")
    p.add_argument("--estimator", default="learned", choices=["learned", "subspace"],
                   help="for --digits: the estimator that guides estimator-based modes")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dims", default="2,16,64,256")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--sampler", default="euler-maruyama", help="for --digits: the sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="estimator,cf,cf-read,cf-read-control")
    p.add_argument("--scales", default="0.5,1,2")
    p.add_argument("--intervals", default="0-1,0-0.8,0.2-0.8")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    warnings.simplefilter("ignore", GuidanceWarning)
    if a.report:
        rows = load_rows(a.report)
        print(testbed_table(rows) if a.testbed else table(rows))
        if a.figure:
            figure(rows, a.figure)
        return rows
    if a.digits or a.testbed:
        model = None if a.model is None else load_model(a.model, device="cpu")
        return bench_digits(a.settings.split(","), a.n, [int(v) for v in a.seeds.split(",")],
                            a.steps, a.estimator, a.out, model, a.model or "default",
                            a.baseline, a.testbed, a.sampler)
    if not a.mixture:
        return bench_cost(a.batch, a.repeats)
    intervals = [tuple(float(v) for v in s.split("-")) for s in a.intervals.split(",")]
    return bench_mixture([int(d) for d in a.dims.split(",")], a.n, a.steps, a.seed,
                         a.modes.split(","), [float(w) for w in a.scales.split(",")],
                         intervals)


if __name__ == "__main__":
    main()
