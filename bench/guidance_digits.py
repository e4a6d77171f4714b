"""The paired harness of bench_guidance.py: every guidance setting on a testbed
(`noiseshift.testbeds`) or on the default digits model.

Each setting is sampled with the same seeds as the unguided run (sample i of both starts from
the same noise and draws the same labels and Brownian increments), so every change is a
paired difference with a paired-bootstrap 95% CI. Per run:

- the shift, read at (up to READS) evenly spaced steps by the learned estimator (the one
  estimator-based modes are guided by) and by the subspace oracle (an independent meter no
  network touches; the exact posterior on the mixture): mean
  delta and mean |step-mean delta| over the steps each meter can read, and the change of the
  latter against unguided;
- FD in the digits classifier's features (the project's FD) and in the top 64 principal
  components of the pixels (a feature space no classifier shapes);
- precision, recall (k = 3) and class accuracy, and their paired changes;
- on the mixture testbed, the exact metrics instead of pixel FD and accuracy: mean
  log-likelihood under the true mixture, energy distance to true samples, total variation
  of the mode shares to the true weights; the meter is the exact posterior (ExactOracle);
- cost per step: seconds per sampler step (meter reading excluded) over the baseline's in
  the same seed, side by side.

Settings: 'unguided', 'MODE:W[@LO-HI][~capC]' (a NAG mode), or a token of `TOKENS`
('cfg:W', 'eps:B', 'ts:WINDOW-CUTOFF', 'dcw:S' / 'dcw-pixel:S' (DCW's wavelet / pixel form),
'corr:SNR-STEPS[-TOL]' (a Langevin corrector), and the sampler-side 'sampler:NAME',
'steps:K', 'g:G' (Euler-Maruyama's --diffusion), 'grid:FILE|LIST|NAME' (NAME: 'logsnr',
'karras:rho=7', ... of `timegrid.GRIDS`, laid out at the run's steps)), joined by '+'
('cfg:1+cf:1', 'sampler:heun+steps:8').
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noiseshift.analysis.classifier import apply_batched
from noiseshift.analysis.quality import (
    FeatureSpace,
    energy_distance,
    energy_distance_difference,
    fd_difference,
    feature_space,
    frechet_distance,
    mode_weights_tv,
    precision_recall,
    precision_recall_difference,
)
from noiseshift.analysis.statistics import N_BOOT, bootstrap, bootstrap_mean
from noiseshift.data import load_data
from noiseshift.errors import NoiseshiftError
from noiseshift.estimators import ExactOracle, SubspaceOracle
from noiseshift.estimators.base import in_zones
from noiseshift.guidance import build_guidance
from noiseshift.pretrained import DEFAULT_DATA, default_estimator, default_model
from noiseshift.sampling import draw_labels, sample
from noiseshift.testbeds import get_testbed
from noiseshift.timegrid import parse_timesteps

GUIDANCE_BANDS = ((0.8, 1.0), (0.5, 0.8), (0.2, 0.5), (0.0, 0.2))
#: The most steps of a run whose states the meters read (evenly spaced).
READS = 50


def _floats(rest: str) -> tuple:
    return tuple(float(v) for v in rest.split("-"))


#: Setting tokens other than NAG modes: 'name:value' -> keywords. A correction adds a line.
#: Keywords named in SAMPLE_KEYS go to `sample` (as factories of the model: `f(model)`),
#: the rest to `build_guidance`.
TOKENS = {
    "cfg": lambda rest: {"cfg_scale": float(rest)},
    "eps": lambda rest: {"eps_scale": float(rest)},
    "ts": lambda rest: {"time_shift": _floats(rest)},
    "dcw": lambda rest: {"dcw": float(rest), "dcw_form": "wavelet"},
    "dcw-pixel": lambda rest: {"dcw": float(rest), "dcw_form": "pixel"},
    "corr": lambda rest: {"corrector": _floats(rest)},
    "sampler": lambda rest: {"sampler": lambda model: rest},
    "steps": lambda rest: {"steps": lambda model: int(rest)},
    "grid": lambda rest: {"timesteps": lambda model: parse_timesteps(rest)},
    "g": lambda rest: {"diffusion": lambda model: float(rest)},
}
SAMPLE_KEYS: set[str] = {"sampler", "steps", "timesteps", "diffusion"}


def parse_setting(text: str) -> dict:
    """Keywords from 'unguided', 'estimator:1', 'cf:1.5@0.2-0.8~cap4',
    'cfg:1+cf-calibrated:1', 'eps:1.005', 'ts:0.2-0.3'."""
    out: dict = {}
    for part in text.split("+"):
        if part == "unguided":
            continue
        part, _, cap = part.partition("~cap")
        kind, _, rest = part.partition(":")
        rest, _, iv = rest.partition("@")
        if iv:
            out["interval"] = _floats(iv)
        if cap:
            out["cap"] = float(cap)
        if kind in TOKENS:
            out.update(TOKENS[kind](rest))
        else:
            out.update(nag_mode=kind, nag_scale=float(rest))
    return out


@dataclass
class Setup:
    """A model and its sampler settings, the guiding estimator, the meters, the feature
    spaces, and (mixture) the true mixture for the exact metrics."""

    model: object
    learned: object
    meter: object
    space: FeatureSpace
    pixels: FeatureSpace | None
    guide: object
    sampler: str = "euler-maruyama"
    steps: int = 16
    mixture: object = None
    name: str = "default"


def setup(model=None, estimator: str = "learned", testbed: str | None = None,
          steps: int = 16, sampler: str = "euler-maruyama") -> Setup:
    """The default digits model (or ``model``) at ``steps`` steps of ``sampler``, or the
    testbed named ``testbed`` (its model, sampler, steps and meter)."""
    tb = get_testbed(testbed) if testbed else None
    if tb is not None and tb.is_pipeline:
        raise NoiseshiftError(f"testbed {tb.name} is a diffusers pipeline: run it with "
                              "`noiseshift sample --model diffusers:DIR` (not this harness)")
    spec = tb.data if tb else DEFAULT_DATA
    data = load_data(spec)
    model = tb.load() if tb else (model or default_model(device="cpu"))
    meter = (ExactOracle(calib_samples=128) if data.mixture is not None
             else SubspaceOracle()).fit(data, model.schedule)
    learned = default_estimator(spec, model.schedule, device="cpu")
    guide = learned if estimator == "learned" else meter
    pixels = None if data.mixture is not None else FeatureSpace(data.x, "raw")
    return Setup(model, learned, meter, feature_space(data), pixels, guide,
                 tb.sampler if tb else sampler, tb.steps if tb else steps,
                 data.mixture, tb.name if tb else "default")


@dataclass
class Run:
    """One sampled run: per-step deltas (S, N) by each meter, the samples, their labels,
    and seconds per sampler step (the meters' reading excluded)."""

    name: str
    seed: int
    t: np.ndarray
    deltas: dict
    x: torch.Tensor
    labels: torch.Tensor
    step_seconds: float = float("nan")


def _reader(su: Setup, t_list: list, d: dict, spent: list, every: int):
    """A sampler callback that reads both meters on every ``every``-th state as it comes,
    keeping only the deltas, and adds its own time to ``spent`` so the step cost leaves it
    out."""
    def read(info):
        if info["i"] % every:
            return
        t0 = time.perf_counter()
        t_list.append(info["t"])
        for key, est in (("learned", su.learned), ("subspace", su.meter)):
            reading = est.predict(info["x"])[0].cpu().numpy()
            d[key].append(reading - float(est.reference(info["t"])))
        spent[0] += time.perf_counter() - t0
    return read


def run(su: Setup, setting: str, n: int, seed: int, steps: int | None = None) -> Run:
    opts = parse_setting(setting)
    sample_kw = {k: opts.pop(k)(su.model) for k in SAMPLE_KEYS if k in opts}
    guided, desc = build_guidance(su.model, estimator=su.guide, **opts)
    skw = {"sampler": su.sampler, "steps": steps or su.steps, **sample_kw}
    if not isinstance(skw.get("timesteps", ""), str):  # a list sets steps, a name follows them
        skw["steps"] = len(skw["timesteps"]) - 1
    steps = skw["steps"]
    t_list: list = []
    d: dict = {"learned": [], "subspace": []}
    spent = [0.0]
    t0 = time.perf_counter()
    # at most READS readings per run: at 250 steps the meters would cost more than the model
    every = max(1, steps // READS)
    out = sample(guided, n, seed=seed, device="cpu",
                 callback=_reader(su, t_list, d, spent, every), **skw)
    seconds = (time.perf_counter() - t0 - spent[0]) / steps
    t = np.array(t_list)
    deltas = {}
    for key, est in (("learned", su.learned), ("subspace", su.meter)):
        deltas[key] = (np.stack(d[key]), ~in_zones(t, est.blind_zones()))
    labels = draw_labels(su.model.num_classes, n, seed)
    name = "unguided" if desc["kind"] == "none" and not sample_kw else (
        desc["kind"] if not sample_kw else setting)
    return Run(name, seed, t, deltas, out.float().cpu(), labels, seconds)


def _abs_shift(d: np.ndarray, seen: np.ndarray):
    return lambda i: float(np.abs(d[seen][:, i].mean(1)).mean())


def _shift(base: Run, r: Run, key: str, n_boot: int) -> dict:
    (da, seen), (db, seen_r) = base.deltas[key], r.deltas[key]
    fa, fb = _abs_shift(da, seen), _abs_shift(db, seen_r)  # grids may differ (sampler-side)
    change = bootstrap(lambda i: fb(i) - fa(i), da.shape[1], n_boot=n_boot)
    masks = [((r.t > lo) | (lo == 0)) & (r.t <= hi) for lo, hi in GUIDANCE_BANDS]
    bands = [float(db[m].mean()) if m.any() else float("nan") for m in masks]
    return {"delta": float(db[seen_r].mean()), "abs": fb(np.arange(db.shape[1])),
            "abs_change": [change.value, change.lo, change.hi], "bands": bands,
            "abs_change_pct": 100 * change.value / fa(np.arange(da.shape[1]))}


def _ci(e) -> list:
    return [e.value, e.lo, e.hi]


def _accuracy(su: Setup, r: Run) -> np.ndarray:
    pred = apply_batched(lambda b: su.space.net(b).argmax(1).double(), r.x)
    return (pred == r.labels.numpy()).astype(np.float64)


def _digits_terms(su: Setup, base: Run, r: Run, n_boot: int) -> dict:
    """Pixel-space FD and class accuracy, and their paired changes."""
    pa, pb = su.pixels(base.x), su.pixels(r.x)
    ha, hb = _accuracy(su, base), _accuracy(su, r)
    return {"fd_pixels": frechet_distance(pb, su.pixels.reference),
            "dfd_pixels": _ci(fd_difference(pa, pb, su.pixels.reference, n_boot=n_boot)),
            "accuracy": _ci(bootstrap_mean(hb, n_boot=n_boot)),
            "daccuracy": _ci(bootstrap_mean(hb - ha, n_boot=n_boot))}


def _mixture_terms(su: Setup, base: Run, r: Run, n_boot: int) -> dict:
    """The exact metrics (log-likelihood, energy distance, mode-weight TV) and their paired
    changes against the base run."""
    mix = su.mixture
    lla, llb = mix.log_prob_data(base.x).numpy(), mix.log_prob_data(r.x).numpy()
    return {"log_likelihood": _ci(bootstrap_mean(llb, n_boot=n_boot)),
            "dlog_likelihood": _ci(bootstrap_mean(llb - lla, n_boot=n_boot)),
            "energy": _ci(energy_distance(r.x, mix, n_boot=n_boot)),
            "denergy": _ci(energy_distance_difference(base.x, r.x, mix, n_boot=n_boot)),
            "mode_tv": mode_weights_tv(r.x, mix),
            "dmode_tv": mode_weights_tv(r.x, mix) - mode_weights_tv(base.x, mix)}


def compare(su: Setup, base: Run, r: Run, n_boot: int = N_BOOT) -> dict:
    """Every number for run r against the baseline run base (paired, same seed)."""
    row = {"setting": r.name, "seed": r.seed, "n": len(r.x)}
    for key in ("learned", "subspace"):
        row[key] = _shift(base, r, key, n_boot)
    fa, fb = su.space(base.x), su.space(r.x)
    ref = su.space.reference
    row["fd"] = frechet_distance(fb, ref)
    row["dfd"] = _ci(fd_difference(fa, fb, ref, n_boot=n_boot))
    row["dfd_pct"] = 100 * row["dfd"][0] / frechet_distance(fa, ref)
    prec, rec = precision_recall(fb, ref, real_radii=su.space.radii(), n_boot=n_boot)
    dprec, drec = precision_recall_difference(fa, fb, ref, real_radii=su.space.radii(),
                                              n_boot=n_boot)
    row.update(precision=_ci(prec), recall=_ci(rec), dprecision=_ci(dprec),
               drecall=_ci(drec))
    extra = _mixture_terms if su.mixture is not None else _digits_terms
    row.update(extra(su, base, r, n_boot))
    row["step_seconds"] = r.step_seconds
    row["cost"] = r.step_seconds / base.step_seconds
    return row


def _cell(v: list, fmt: str = "+.2f") -> str:
    return f"{v[0]:{fmt}} [{v[1]:{fmt}}, {v[2]:{fmt}}]"


def _extras(row: dict) -> str:
    if "dlog_likelihood" in row:
        return (f"{row['dlog_likelihood'][0]:>+7.2f} {row['denergy'][0]:>+7.4f} "
                f"{row['dmode_tv']:>+6.3f}")
    return f"{row['dfd_pixels'][0]:>+7.2f} {row['daccuracy'][0]:>+7.3f} {'':>6}"


def print_row(row: dict) -> None:
    sub, lea = row["subspace"], row["learned"]
    print(f"{row['setting']:<34}{row['seed']:>4}{lea['delta']:>+8.4f}{sub['delta']:>+8.4f}"
          f"{sub['abs']:>7.4f}{sub['abs_change_pct']:>+6.0f}%{lea['abs_change_pct']:>+6.0f}%"
          f"{row['fd']:>7.2f}  {_cell(row['dfd']):<22}{row['dfd_pct']:>+5.0f}% "
          f"{row['drecall'][0]:>+6.3f} {row['dprecision'][0]:>+6.3f} {_extras(row)}"
          f"{row['cost']:>6.2f}")
    sys.stdout.flush()


HEADER = (f"{'setting':<34}{'seed':>4}{'d lrn':>8}{'d ind':>8}{'|d|ind':>7}{'ind%':>7}"
          f"{'lrn%':>7}{'FD':>7}  {'dFD [95% CI]':<22}{'dFD%':>6} {'drec':>6} {'dprec':>6} "
          f"{'dFDpix/dLL':>7} {'dacc/dED':>7} {'dTV':>6}{'cost':>6}")


def bench_digits(settings: list[str], n: int, seeds: list[int], steps: int,
                 estimator: str = "learned", out: str | None = None, model=None,
                 model_name: str = "default", baseline: str = "unguided",
                 testbed: str | None = None, sampler: str = "euler-maruyama") -> list:
    """Every setting on each seed against that seed's ``baseline`` run (unguided, or e.g.
    'cfg:1'), on the default digits model at ``steps`` or on ``testbed``; rows appended to
    the JSON-lines file ``out`` as they finish (so a long sweep can be read while it
    runs)."""
    su = setup(model, estimator, testbed, steps, sampler)
    model_name = testbed or model_name
    print(f"{su.name}: {su.sampler} {su.steps} steps, n={n}, seeds {seeds}; guided by the "
          f"{estimator} estimator; d = mean delta (learned / independent meter), % = change "
          f"of mean |delta| against {baseline}; cost = seconds per step over {baseline}'s")
    print(HEADER)
    rows = []
    for seed in seeds:
        base = run(su, baseline, n, seed)
        for text in settings:
            r = base if text == baseline else run(su, text, n, seed)
            row = {**compare(su, base, r), "text": text, "steps": su.steps,
                   "sampler": su.sampler, "model": model_name, "guide": estimator,
                   "baseline": baseline, "meter": su.meter.name}
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
