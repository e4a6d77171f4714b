"""The digits part of bench_guidance.py: every guidance setting on the default model.

Each setting is sampled with the same seeds as the unguided run (sample i of both starts from
the same noise and draws the same labels and Brownian increments), so every change is a
paired difference with a paired-bootstrap 95% CI. Per run:

- the shift, read at every step by the learned estimator (the one estimator-based modes are
  guided by) and by the subspace oracle (an independent meter no network touches): mean
  delta and mean |step-mean delta| over the steps each meter can read, and the change of the
  latter against unguided;
- FD in the digits classifier's features (the project's FD) and in the top 64 principal
  components of the pixels (a feature space no classifier shapes);
- precision, recall (k = 3) and class accuracy, and their paired changes.

Settings: 'unguided', 'MODE:W[@LO-HI][~capC]', 'cfg:W', joined by '+' ('cfg:1+cf:1');
'eps:B', 'ts:WINDOW-CUTOFF', 'dcw:S' / 'dcw-pixel:S' (DCW's wavelet / pixel form).
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noiseshift.analysis.classifier import apply_batched
from noiseshift.analysis.quality import (
    FeatureSpace,
    fd_difference,
    feature_space,
    frechet_distance,
    precision_recall,
    precision_recall_difference,
)
from noiseshift.analysis.statistics import N_BOOT, bootstrap, bootstrap_mean
from noiseshift.data import load_data
from noiseshift.defaults import DEFAULT_SAMPLER
from noiseshift.estimators import SubspaceOracle
from noiseshift.estimators.base import in_zones
from noiseshift.guidance import build_guidance
from noiseshift.pretrained import DEFAULT_DATA, default_estimator, default_model
from noiseshift.sampling import draw_labels, sample
from noiseshift.timegrid import read_timesteps

GUIDANCE_BANDS = ((0.8, 1.0), (0.5, 0.8), (0.2, 0.5), (0.0, 0.2))


def parse_setting(text: str) -> dict:
    """build_guidance keywords from 'unguided', 'estimator:1', 'cf:1.5@0.2-0.8~cap4',
    'cfg:1+cf-calibrated:1', 'eps:1.005', 'ts:0.2-0.3'."""
    out: dict = {}
    for part in text.split("+"):
        if part == "unguided":
            continue
        part, _, cap = part.partition("~cap")
        kind, _, rest = part.partition(":")
        rest, _, iv = rest.partition("@")
        if iv:
            out["interval"] = tuple(float(v) for v in iv.split("-"))
        if cap:
            out["cap"] = float(cap)
        if kind == "cfg":
            out["cfg_scale"] = float(rest)
        elif kind == "eps":
            out["eps_scale"] = float(rest)
        elif kind == "ts":
            out["time_shift"] = tuple(float(v) for v in rest.split("-"))
        elif kind in ("dcw", "dcw-pixel"):
            out.update(dcw=float(rest), dcw_form="pixel" if kind == "dcw-pixel" else "wavelet")
        elif kind in ("sampler", "steps", "grid"):  # sampler-side: 'sampler:heun+steps:8'
            out[kind] = rest if kind != "steps" else int(rest)
        elif kind == "corr":  # 'corr:SNR-STEPS[-TOL]', a Langevin corrector
            out["corrector"] = tuple(float(v) for v in rest.split("-"))
        else:
            out.update(nag_mode=kind, nag_scale=float(rest))
    return out


@dataclass
class Setup:
    """The default model, the guiding estimator, the meters and the feature spaces."""

    model: object
    learned: object
    meter: object
    space: FeatureSpace
    pixels: FeatureSpace
    guide: object


def setup(model=None, estimator: str = "learned") -> Setup:
    data = load_data(DEFAULT_DATA)
    model = model or default_model(device="cpu")
    meter = SubspaceOracle().fit(data, model.schedule)
    learned = default_estimator(device="cpu")
    guide = learned if estimator == "learned" else meter
    return Setup(model, learned, meter, feature_space(data), FeatureSpace(data.x, "raw"), guide)


@dataclass
class Run:
    """One sampled run: per-step deltas (S, N) by each meter, the samples, their labels."""

    name: str
    seed: int
    t: np.ndarray
    deltas: dict
    x: torch.Tensor
    labels: torch.Tensor


def run(su: Setup, setting: str, n: int, seed: int, steps: int,
        sampler: str = DEFAULT_SAMPLER) -> Run:
    kw = parse_setting(setting)
    skw = {"steps": kw.pop("steps", steps), "sampler": kw.pop("sampler", sampler)}
    if "grid" in kw:
        skw["timesteps"] = read_timesteps(kw.pop("grid"))
    guided, desc = build_guidance(su.model, estimator=su.guide, **kw)
    states: list = []
    out = sample(guided, n, **skw, seed=seed, device="cpu",
                 callback=lambda info: states.append((info["t"], info["x"])))
    t = np.array([s[0] for s in states])
    deltas = {}
    for key, est in (("learned", su.learned), ("subspace", su.meter)):
        d = [est.predict(x)[0].cpu().numpy() - float(est.reference(tt)) for tt, x in states]
        deltas[key] = (np.stack(d), ~in_zones(t, est.blind_zones()))
    labels = draw_labels(su.model.num_classes, n, seed)
    name = "unguided" if desc["kind"] == "none" else desc["kind"]
    name = setting if set(skw) - {"steps", "sampler"} or skw["steps"] != steps or \
        skw["sampler"] != DEFAULT_SAMPLER else name
    return Run(name, seed, t, deltas, out.float().cpu(), labels)


def _abs_shift(d: np.ndarray, seen: np.ndarray):
    return lambda i: float(np.abs(d[seen][:, i].mean(1)).mean())


def _shift(base: Run, r: Run, key: str, n_boot: int) -> dict:
    (da, seen), (db, seen_r) = base.deltas[key], r.deltas[key]
    fa, fb = _abs_shift(da, seen), _abs_shift(db, seen_r)  # grids may differ (sampler-side)
    change = bootstrap(lambda i: fb(i) - fa(i), da.shape[1], n_boot=n_boot)
    bands = [float(db[((r.t > lo) | (lo == 0)) & (r.t <= hi)].mean())
             for lo, hi in GUIDANCE_BANDS]
    return {"delta": float(db[seen_r].mean()), "abs": fb(np.arange(db.shape[1])),
            "abs_change": [change.value, change.lo, change.hi], "bands": bands,
            "abs_change_pct": 100 * change.value / fa(np.arange(da.shape[1]))}


def _ci(e) -> list:
    return [e.value, e.lo, e.hi]


def _accuracy(su: Setup, r: Run) -> np.ndarray:
    pred = apply_batched(lambda b: su.space.net(b).argmax(1).double(), r.x)
    return (pred == r.labels.numpy()).astype(np.float64)


def compare(su: Setup, base: Run, r: Run, n_boot: int = N_BOOT) -> dict:
    """Every number for run r against the unguided run base (paired, same seed)."""
    row = {"setting": r.name, "seed": r.seed, "n": len(r.x)}
    for key in ("learned", "subspace"):
        row[key] = _shift(base, r, key, n_boot)
    fa, fb = su.space(base.x), su.space(r.x)
    ref = su.space.reference
    row["fd"] = frechet_distance(fb, ref)
    row["dfd"] = _ci(fd_difference(fa, fb, ref, n_boot=n_boot))
    row["dfd_pct"] = 100 * row["dfd"][0] / frechet_distance(fa, ref)
    pa, pb = su.pixels(base.x), su.pixels(r.x)
    row["fd_pixels"] = frechet_distance(pb, su.pixels.reference)
    row["dfd_pixels"] = _ci(fd_difference(pa, pb, su.pixels.reference, n_boot=n_boot))
    prec, rec = precision_recall(fb, ref, real_radii=su.space.radii(), n_boot=n_boot)
    dprec, drec = precision_recall_difference(fa, fb, ref, real_radii=su.space.radii(),
                                              n_boot=n_boot)
    row.update(precision=_ci(prec), recall=_ci(rec), dprecision=_ci(dprec),
               drecall=_ci(drec))
    ha, hb = _accuracy(su, base), _accuracy(su, r)
    row["accuracy"] = _ci(bootstrap_mean(hb, n_boot=n_boot))
    row["daccuracy"] = _ci(bootstrap_mean(hb - ha, n_boot=n_boot))
    return row


def _cell(v: list, fmt: str = "+.2f") -> str:
    return f"{v[0]:{fmt}} [{v[1]:{fmt}}, {v[2]:{fmt}}]"


def print_row(row: dict) -> None:
    sub, lea = row["subspace"], row["learned"]
    print(f"{row['setting']:<34}{row['seed']:>4}{lea['delta']:>+8.4f}{sub['delta']:>+8.4f}"
          f"{sub['abs']:>7.4f}{sub['abs_change_pct']:>+6.0f}%{lea['abs_change_pct']:>+6.0f}%"
          f"{row['fd']:>7.2f}  {_cell(row['dfd']):<22}{row['dfd_pct']:>+5.0f}% "
          f"{row['dfd_pixels'][0]:>+6.2f} {row['drecall'][0]:>+6.3f} "
          f"{row['dprecision'][0]:>+6.3f} {row['daccuracy'][0]:>+6.3f}")
    sys.stdout.flush()


HEADER = (f"{'setting':<34}{'seed':>4}{'d lrn':>8}{'d sub':>8}{'|d|sub':>7}{'sub%':>7}"
          f"{'lrn%':>7}{'FD':>7}  {'dFD [95% CI]':<22}{'dFD%':>6} {'dFDpix':>6} {'drec':>6} "
          f"{'dprec':>6} {'dacc':>6}")


def bench_digits(settings: list[str], n: int, seeds: list[int], steps: int,
                 estimator: str = "learned", out: str | None = None, model=None,
                 model_name: str = "default", baseline: str = "unguided",
                 sampler: str = "euler-maruyama") -> list:
    """Every setting on each seed against that seed's ``baseline`` run (unguided, or e.g.
    'cfg:1'); rows appended to the JSON-lines file ``out`` as they finish (so a long sweep
    can be read while it runs)."""
    su = setup(model, estimator)
    print(f"default digits model, {sampler} {steps} steps, n={n}, seeds {seeds}; guided "
          f"by the {estimator} estimator; d = mean delta (learned / subspace), % = change "
          f"of mean |delta| against unguided")
    print(HEADER)
    rows = []
    for seed in seeds:
        base = run(su, baseline, n, seed, steps, sampler)
        for text in settings:
            r = base if text == baseline else run(su, text, n, seed, steps, sampler)
            row = {**compare(su, base, r), "text": text, "steps": steps, "sampler": sampler,
                   "model": model_name, "guide": estimator, "baseline": baseline}
            print_row(row)
            rows.append(row)
            if out:
                with Path(out).open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Rows grouped by (setting, steps): means over seeds of the changes."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["text"], r.get("steps")), []).append(r)
    out = []
    for (text, steps), rs in groups.items():
        out.append({"text": text, "steps": steps, "seeds": [r["seed"] for r in rs],
                    "sub_pct": statistics.mean(r["subspace"]["abs_change_pct"] for r in rs),
                    "lrn_pct": statistics.mean(r["learned"]["abs_change_pct"] for r in rs),
                    "dfd_pct": statistics.mean(r["dfd_pct"] for r in rs),
                    "resolved": sum(r["dfd"][2] < 0 for r in rs),
                    "worse": sum(r["dfd"][1] > 0 for r in rs)})
    return out
