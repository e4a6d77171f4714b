"""The paper's regime: classifier-free NAG (Zhong et al. 2025, arXiv 2510.12497) and
noiseshift's NAG modes on the default digits model at the paper's step counts (Euler-Maruyama
128 and 250), where the sampler's own error is small.

    python bench/paper_regime.py guidance --steps 250 --n 256 --seeds 0 \
        --settings unguided,cf:1,estimator-step:1.5 --out rows.jsonl [--baseline cfg:1]
    python bench/paper_regime.py network --steps 250 --n 256 --settings unguided,cf:1
    python bench/paper_regime.py gap --steps 250 --n 256
    python bench/bench_guidance.py --report rows.jsonl          # the guidance table

guidance: as `bench_guidance.py --digits` (guidance_digits.py: the same seeds, paired
bootstrap CIs, the same row format, so `--report` reads both), but the meters read every
`--read-every`-th step only: at 250 steps reading every state costs more than sampling.

network: the shift of each setting split into the sampler's and the network's parts by
`analysis.decompose` (the run re-drawn, then at k x the steps on the same Brownian path,
extrapolated), read by the independent subspace meter (no setting is guided by it), per band
of t. The guided model stands in for the network in both runs, so a setting's network part
is its shift at infinitely many steps: what a correction of the model's output can remove.

gap: how much the model reads t (`analysis.probe.probe`), and the classifier-free NAG term
d = v(x|t) - v(x|null t) on the unguided run's states and on true x_t at the same t
(`analysis.probe.branch_gap`), per band of t: its size against v, in eps units against its
floor on true states (where the ideal d is 0), and its direction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from guidance_digits import HEADER, Run, compare, parse_setting, print_row, setup

from noiseshift.analysis.decompose import fine_states, regenerate, split_parts
from noiseshift.analysis.probe import branch_gap, probe
from noiseshift.analysis.shifts import SHIFT_BANDS, read_states, true_readings
from noiseshift.data import load_data
from noiseshift.estimators.base import in_zones
from noiseshift.guidance import build_guidance
from noiseshift.pretrained import DEFAULT_DATA
from noiseshift.sampling import draw_labels, sample, sampler_settings, timesteps

SAMPLER = "euler-maruyama"


def _every(steps: int, k: int):
    """Keep step i when i % k == 0, and the last step (where the shift is largest)."""
    return lambda i: i % k == 0 or i == steps - 1


def run_read_every(su, setting: str, n: int, seed: int, steps: int, every: int) -> Run:
    """guidance_digits.run, with the meters reading every `every`-th step only."""
    guided, desc = build_guidance(su.model, estimator=su.guide, **parse_setting(setting))
    keep, states = _every(steps, every), []
    out = sample(guided, n, steps=steps, seed=seed, device="cpu",
                 callback=lambda info: keep(info["i"]) and states.append((info["t"], info["x"])))
    t = np.array([s[0] for s in states])
    deltas = {}
    for key, est in (("learned", su.learned), ("subspace", su.meter)):
        d = [est.predict(x)[0].cpu().numpy() - float(est.reference(tt)) for tt, x in states]
        deltas[key] = (np.stack(d), ~in_zones(t, est.blind_zones()))
    name = "unguided" if desc["kind"] == "none" else desc["kind"]
    return Run(name, seed, t, deltas, out.float().cpu(),
               draw_labels(su.model.num_classes, n, seed))


def guidance(a) -> None:
    su = setup()
    print(f"default digits model, {SAMPLER} {a.steps} steps, n={a.n}, seeds {a.seeds}, "
          f"meters read every {a.read_every}th step; against {a.baseline}")
    print(HEADER)
    for seed in a.seeds:
        base = run_read_every(su, a.baseline, a.n, seed, a.steps, a.read_every)
        for text in a.settings:
            r = base if text == a.baseline else run_read_every(su, text, a.n, seed, a.steps,
                                                               a.read_every)
            row = {**compare(su, base, r), "text": text, "steps": a.steps,
                   "model": "default", "guide": "learned", "baseline": a.baseline,
                   "read_every": a.read_every}
            print_row(row)
            if a.out:
                with Path(a.out).open("a") as f:
                    f.write(json.dumps(row) + "\n")


def network_parts(su, setting: str, n: int, seed: int, steps: int, k: int, every: int):
    """`decompose`'s split of one setting's run (the guided model as the network), read by
    the subspace meter at every `every`-th step."""
    guided, _ = build_guidance(su.model, estimator=su.guide, **parse_setting(setting))
    settings = {**sampler_settings(SAMPLER, steps), "recorded": {"every": every}}
    labels = draw_labels(su.model.num_classes, n, seed)
    shape = tuple(su.model.config["shape"])
    x_T, coarse, draws = regenerate(guided, settings, seed, n, shape, labels)
    fine = fine_states(guided, settings, x_T, draws, k, labels, seed)
    ts = timesteps(steps).numpy()[:-1][::every]
    data = load_data(DEFAULT_DATA)
    return split_parts(f"{setting}, fine x{k}", k, ts, read_states(su.meter, coarse),
                       read_states(su.meter, fine), true_readings(su.meter, data, ts, n, seed),
                       1, 0.0)


def network(a) -> None:
    su = setup()
    print(f"default digits model, {SAMPLER} {a.steps} steps, n={a.n}, seed {a.seeds[0]}, "
          f"fine run x{a.k}, subspace meter every {a.read_every}th step; mean shift per band "
          f"[95% CI]")
    print(f"{'setting':<24}{'band':<12}{'total':>24}{'sampler':>24}{'network':>24}")
    for text in a.settings:
        dec = network_parts(su, text, a.n, a.seeds[0], a.steps, a.k, a.read_every)
        for _, b in dec.bands.iterrows():
            cells = "".join(f"{b[p]:>+8.4f} [{b[p + '_lo']:+.4f}, {b[p + '_hi']:+.4f}]"
                            for p in ("total", "sampler", "network"))
            print(f"{text:<24}{b.band:<12}{cells}")
        print(f"  {dec.sentence}")
        if a.out:
            with Path(a.out).open("a") as f:
                f.write(json.dumps({"setting": text, "steps": a.steps, "n": a.n,
                                    "seed": a.seeds[0], "k": a.k, **dec.to_dict()}) + "\n")
        sys.stdout.flush()


def gap(a) -> None:
    su, data = setup(), load_data(DEFAULT_DATA)
    res = probe(su.model, data, n=a.n, seed=a.seeds[0])
    print(f"probe (n={a.n}): {res.verdict}")
    keep, states = _every(a.steps, a.read_every), []
    labels = draw_labels(su.model.num_classes, a.n, a.seeds[0])
    sample(su.model, a.n, steps=a.steps, seed=a.seeds[0], device="cpu",
           callback=lambda info: keep(info["i"]) and info["t"] < 1 and states.append(
               (info["t"], info["x"], labels)))
    rows = branch_gap(su.model, data, states, seed=a.seeds[0])
    # At t = 1 the state is all noise, eps = x / sigma whatever the output: d is 0 in eps units.
    print(f"cf term d = v(x|t) - v(x|null t) on the unguided {a.steps}-step run's states "
          f"(sampler) and on true x_t (true), n={a.n}; means over the band's read steps")
    print(f"{'band':<12}{'source':<9}{'|d|/|v|':>9}{'d eps rms':>11}{'cos(d,eps_hat)':>16}"
          f"{'cos(d,eps)':>12}{'noise share':>13}{'sampler/true':>14}")
    for lo, hi in SHIFT_BANDS:
        inband = [r for r in rows if lo < r["t"] <= hi or (lo == 0 and r["t"] == 0)]
        means = {s: _means([r for r in inband if r["source"] == s]) for s in ("sampler", "true")}
        for s, m in means.items():
            if not m:
                continue
            ratio = m["eps_rms"] / means["true"]["eps_rms"]
            print(f"{lo:.2f}-{hi:.2f}   {s:<9}{m['rel']:>9.3f}{m['eps_rms']:>11.4f}"
                  f"{m['cos_pred']:>16.3f}{m.get('cos_true', float('nan')):>12.3f}"
                  f"{m['noise_frac']:>9.2f} ({m['noise_dims']:.2f}){ratio:>10.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"probe": res.to_dict(), "gap": rows}) + "\n")


def _means(rows: list[dict]) -> dict:
    return {k: statistics.mean(r[k] for r in rows) for k in rows[0]
            if k not in ("t", "source")} if rows else {}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["guidance", "network", "gap"])
    p.add_argument("--settings", default="unguided,cf:1,estimator-step:1.5")
    p.add_argument("--baseline", default="unguided")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seeds", default="0")
    p.add_argument("--read-every", type=int, default=5)
    p.add_argument("--k", type=int, default=2, help="network: the fine run's step factor")
    p.add_argument("--out", default=None, help="append rows (JSON lines); gap: write JSON")
    a = p.parse_args(argv)
    a.settings = a.settings.split(",")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    {"guidance": guidance, "network": network, "gap": gap}[a.what](a)


if __name__ == "__main__":
    main()
