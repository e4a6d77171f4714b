"""Do no harm: a guided run checks itself on a short pilot before the full run.

NAG follows one meter (the estimator it optimises against). On a model whose states that
meter misreads (issue 20: a weak diffusers DDPM whose content error the learned estimator
reads as noise), following it moves the states *off* the schedule and triples FD. The guard
draws a pilot of the guided run beside the unguided one (the first ``pilot_n`` samples, the
same seed, so they pair up) and reads both with an independent meter: the subspace oracle
where the data give one, the exact posterior for the mixture, the wavelet estimator
otherwise, and never the estimator the guidance reads. When the guided states' shift
exceeds the baseline's by more than ``factor`` (the paired bootstrap CI of the ratio above
1), or its final samples grow in size by that factor (samples that blow up saturate a meter
of t), or their largest value does, the scale is halved and the pilot redrawn; after
``halvings`` halvings the guidance is stopped.

    check = guard(make, scale=1.5, meter=independent_meter(data, schedule, avoid="learned"))
    check.scale        # the scale to run (None: stopped), check.message(): one line or None

``make(scale, n) -> (guidance dict, backend)`` builds the run at a scale for n samples
(`recording.SamplerBackend`, `integrations.pipeline_runs.PipelineBackend`); the spec of the
full run gives the rest (`pilot_spec`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..errors import NoiseshiftError
from ..estimators import NoiseLevelEstimator
from ..guidance import GuidanceWarning, build_guidance
from ..io import open_trajectories
from ..recording import SamplerBackend
from ..runspec import RunSpec
from .statistics import Estimate, bootstrap

#: Pilot size: enough for a paired CI of the ratio to resolve a doubling (the shift's
#: per-step means over 32 samples), a few percent of a full run's cost.
PILOT_N = 32
#: Fewer pilot samples than this resolve nothing: the check is skipped, and says so.
MIN_PILOT = 16
#: Harm: the independent meter's mean |delta| grows by more than this factor (resolved).
#: Below 2, so that a setting that doubles the shift is caught by the pilot's noise.
FACTOR = 1.5
#: How many times the scale is halved before the guidance is stopped.
HALVINGS = 3


def pilot_spec(spec: RunSpec, n: int, guidance: dict, run: str) -> RunSpec:
    """The first ``n`` samples of ``spec`` (same seed, their labels), all steps recorded,
    with ``guidance``, as run ``run``."""
    n = min(int(n), spec.n)
    labels = None if spec.labels is None else spec.labels[:n]
    return dataclasses.replace(spec, n=n, labels=labels, record_n=None, record_every=1,
                               guidance=dict(guidance), run=run)


def step_deltas(meter: NoiseLevelEstimator, run) -> np.ndarray:
    """(readable steps, N): the meter's t' minus its reference at each recorded step of
    ``run`` (an `io.Run`), the steps in its blind zones left out."""
    ref = np.asarray(meter.reference(run.t), dtype=np.float64)
    keep = ~meter.in_blind_zone(run.t)
    out = np.zeros((run.num_steps, run.n))
    for i, sl, block in run.iter_chunks():
        out[i, sl] = meter.predict(torch.from_numpy(block))[0].cpu().numpy() - ref[i]
    return out[keep]


def mean_abs_shift(d: np.ndarray, idx=None) -> float:
    """The report's mean |delta|: the mean over steps of |the step's mean delta|."""
    d = d if idx is None else d[:, idx]
    return float(np.abs(d.mean(axis=1)).mean())


def shift_ratio(guided: np.ndarray, base: np.ndarray, seed: int = 0) -> Estimate:
    """mean |delta| of the guided pilot over the baseline's, with a paired bootstrap CI
    (sample i of both runs shares its noise)."""
    return bootstrap(lambda i: mean_abs_shift(guided, i) / max(mean_abs_shift(base, i), 1e-12),
                     guided.shape[1], seed=seed)


@dataclass
class SafetyCheck:
    """What the guard found: the scale asked for and the one to run (None: stopped), the
    meter, the baseline pilot's mean |delta|, and one reading per scale tried ({"scale",
    "mean_abs_delta", "ratio", "ratio_lo", "ratio_hi", "harm"}); None readings and a note
    when no check could be made."""

    asked: float
    scale: float | None
    meter: str | None
    pilot_n: int = 0
    factor: float = FACTOR
    baseline: float | None = None
    readings: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    note: str | None = None

    @property
    def action(self) -> str:
        """"skipped", "kept", "reduced" or "stopped"."""
        if self.meter is None:
            return "skipped"
        return "stopped" if self.scale is None else (
            "kept" if self.scale == self.asked else "reduced")

    def to_dict(self) -> dict:
        """What the run's ``guidance`` attribute records under ``safety``."""
        return {"action": self.action, **dataclasses.asdict(self)}

    def message(self) -> str | None:
        """One line for a reduced, stopped or skipped check; None when the scale was kept."""
        return safety_message(self.to_dict())


def _rms_note(r: dict) -> str:
    """The final samples' size, where it grew past the harm factor."""
    ratio, peak = r.get("rms_ratio"), r.get("peak_ratio")
    if ratio is not None and ratio > FACTOR:
        return f" (samples x{ratio:.1f} in size)"
    return f" (largest value x{peak:.1f})" if peak is not None and peak > FACTOR else ""


def safety_message(d: dict) -> str | None:
    """The one line `SafetyCheck.message` says, from its recorded dict (a run's
    ``guidance["safety"]``); None when the scale was kept."""
    if d["action"] == "kept":
        return None
    if d["action"] == "skipped":
        return f"safety check skipped: {d['note']}"
    tried = "; ".join(f"{r['scale']:g}: x{r['ratio']:.2f} [{r['ratio_lo']:.2f}, "
                      f"{r['ratio_hi']:.2f}]" + _rms_note(r) for r in d["readings"])
    what = (f"reduced the NAG scale from {d['asked']:g} to {d['scale']:g}"
            if d["scale"] is not None else f"stopped NAG at scale {d['asked']:g}")
    return (f"safety: {what}: it moved the pilot's states off the schedule by the "
            f"independent {d['meter']} meter, or blew its samples up (mean |delta| guided / "
            f"unguided, {d['pilot_n']} samples: {tried}; harm above x{d['factor']:g}); "
            f"--no-safety runs it as asked")


Make = Callable[[float, int], tuple[dict, object]]


def guard(spec: RunSpec, make: Make, scale: float, meter: NoiseLevelEstimator | None, *,
          pilot_n: int = PILOT_N, factor: float = FACTOR, halvings: int = HALVINGS,
          seed: int = 0) -> SafetyCheck:
    """Pilot run ``spec`` (guided at ``scale``) beside its baseline on its first
    ``pilot_n`` samples and read both with ``meter``; halve the scale while the guided
    shift is more than ``factor`` times the baseline's (the ratio's CI above 1), at most
    ``halvings`` times, then stop. ``make(scale, n)`` gives (the guidance dict, a backend
    drawing n samples). ``meter`` None: skipped, the scale kept."""
    if meter is None:
        return SafetyCheck(scale, scale, None, note="no data to fit an independent meter "
                           "on (give --data)")
    if min(pilot_n, spec.n) < MIN_PILOT:
        return SafetyCheck(scale, scale, None, note=f"a pilot needs at least {MIN_PILOT} "
                           f"samples (n = {spec.n})")
    t0 = time.perf_counter()
    check = SafetyCheck(scale, None, meter.name, min(pilot_n, spec.n), factor)
    # Every rank draws the whole pilot (it is small), so all reach the same decision.
    with distributed.alone(), tempfile.TemporaryDirectory(prefix="noiseshift-pilot-") as tmp:
        path = Path(tmp) / "pilot.h5"
        base = None
        for k in range(halvings + 1):
            s = scale / 2**k
            guidance, backend = make(s, check.pilot_n)
            if base is None:
                base = _pilot(backend, pilot_spec(spec, check.pilot_n, {"kind": "none"},
                                                  "pilot-unguided"), path, meter)
                check.baseline = mean_abs_shift(base[0])
            got = _pilot(backend, pilot_spec(spec, check.pilot_n, guidance, f"pilot-{k}"),
                         path, meter)
            check.readings.append(_reading(s, got, base, factor, seed))
            harm = check.readings[-1]["harm"]
            if not harm:
                check.scale = s
                break
    check.seconds = time.perf_counter() - t0
    return check


def _pilot(backend, spec: RunSpec, path: Path, meter) -> tuple:
    """Draw ``spec`` into the pilot file: (its states' deltas read by ``meter``, the RMS of
    each final sample, the largest |value| of any)."""
    backend.draw(spec, path)
    with open_trajectories(path) as f:
        run = f.run(spec.run)
        x = run.read_samples().reshape(run.n, -1).astype(np.float64)
        return step_deltas(meter, run), np.sqrt((x**2).mean(axis=1)), float(np.abs(x).max())


def _reading(scale: float, got, base, factor: float, seed: int) -> dict:
    """One scale's reading: the meter's shift ratio, and the final samples' RMS ratio
    (samples that blow up saturate a meter of t, so their size is checked too: data-free);
    harm when either grows by more than ``factor``, resolved."""
    r = shift_ratio(got[0], base[0], seed)
    rms = bootstrap(lambda i: got[1][i].mean() / max(base[1][i].mean(), 1e-12), len(got[1]),
                    seed=seed)
    # One sample in 64 that blows up can multiply FD: the largest value counts on its own.
    peak = float(got[2] / max(base[2], 1e-12))
    harm = (r.value > factor and r.lo > 1) or (rms.value > factor and rms.lo > 1) or \
        peak > factor
    return {"scale": scale, "mean_abs_delta": mean_abs_shift(got[0]), "ratio": r.value,
            "ratio_lo": r.lo, "ratio_hi": r.hi, "rms_ratio": rms.value, "rms_lo": rms.lo,
            "rms_hi": rms.hi, "peak_ratio": peak, "harm": bool(harm)}


def guarded(spec: RunSpec, make: Make, scale: float, meter, **kw) -> tuple[RunSpec, object]:
    """`guard`, then (the spec at the scale kept, its guidance recording the check under
    ``safety``; its backend for all n). A stopped check raises NoiseshiftError with its
    line; a run named after its guidance is renamed after the scale kept."""
    check = guard(spec, make, scale, meter, **kw)
    if check.scale is None:
        raise NoiseshiftError(check.message())
    guidance, backend = make(check.scale, spec.n)
    run = None if spec.run == spec.guidance.get("kind") else spec.run
    return spec.with_guidance({**guidance, "safety": check.to_dict()}, run), backend


def sampler_make(model, options: dict, device: str = "auto", source: str | None = None
                 ) -> Make:
    """``make`` for a built-in-protocol denoiser: `build_guidance(model, **options)` at a
    NAG scale (its warnings were shown once already), drawn by `SamplerBackend`."""

    def make(scale: float, n: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuidanceWarning)
            guided, guidance = build_guidance(model, **{**options, "nag_scale": scale})
        return guidance, SamplerBackend(model, guided, device=device, source=source)

    return make


__all__ = ["FACTOR", "HALVINGS", "MIN_PILOT", "PILOT_N", "SafetyCheck", "guard", "guarded",
           "mean_abs_shift", "pilot_spec", "safety_message",
           "sampler_make", "shift_ratio", "step_deltas"]
