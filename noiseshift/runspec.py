"""What a sampling run is, resolved once from its options: `RunSpec`.

A spec holds everything that decides a run's samples and how it is recorded: the sampler's
settings (the run's ``sampler`` attribute), the model description, seed, n, labels, the
recorded subset, the guidance and the run name. The recorders write exactly its `attrs`, and
a recorded run is a spec's baseline when its attributes equal those of `spec.baseline()`
(`matches`), so the built-in sampler and a diffusers pipeline find their baselines the same
way (`recording.record_with_baseline`):

    spec = RunSpec.for_model(model, n=512, seed=0, guidance=desc)
    spec.run, spec.attrs()["sampler"]      # "nag-estimator-step-1.5", {"name": ..., ...}
    spec.baseline().matches(run)           # is `run` (an io.Run) its unguided baseline?
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch

from .defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import NoiseshiftError
from .io.h5 import check_run_name
from .models import describe
from .sampling import draw_labels, safe_t_max, sampler_settings

UNGUIDED = {"kind": "none"}
BASELINE = "unguided"


def recorded_count(n: int, record_n: int | None) -> int:
    """How many samples a run records: the first ``record_n`` of n (all when None)."""
    if record_n is not None and record_n < 1:
        raise NoiseshiftError(f"--record-n must be at least 1, got {record_n}")
    return n if record_n is None else min(int(record_n), n)


def recorded_settings(settings: dict, n: int, record_n: int | None = None,
                      record_every: int = 1) -> dict:
    """The run's ``sampler`` attribute: the sampler settings, plus ``recorded`` = {"n",
    "samples", "every"} when only some samples or steps are recorded (so a baseline matches
    only a run that recorded the same subset)."""
    if record_every < 1:
        raise NoiseshiftError(f"--record-every must be at least 1, got {record_every}")
    m = recorded_count(n, record_n)
    if m == n and record_every == 1:
        return settings
    return {**settings, "recorded": {"n": int(n), "samples": m, "every": int(record_every)}}


def _run_name(guidance: dict, run: str | None) -> str:
    """``run``, checked, or by default 'unguided' or the guidance's kind."""
    kind = guidance.get("kind", "none")
    return check_run_name(run or (BASELINE if kind == "none" else str(kind)))


def _plain(obj):
    """``obj`` as it reads back from a file's JSON attributes (tuples as lists, ...)."""
    return json.loads(json.dumps(obj))


@dataclass(frozen=True)
class RunSpec:
    """One run, resolved: ``settings`` (the sampler's: name, steps, and for built-in
    samplers the t range and options), ``model`` (the run's model attribute), n, seed, the
    labels of all n (None for an unconditional model), the guidance dict, the run name, and
    the recorded subset (the first ``record_n`` samples, every ``record_every``-th step)."""

    settings: dict
    model: dict
    n: int
    seed: int
    labels: tuple[int, ...] | None
    guidance: dict
    run: str
    record_n: int | None = None
    record_every: int = 1

    def __post_init__(self):
        recorded_settings(self.settings, self.n, self.record_n, self.record_every)

    @classmethod
    def for_model(cls, model, *, n: int, sampler: str = DEFAULT_SAMPLER,
                  steps: int = DEFAULT_STEPS, seed: int = 0, y=None,
                  guidance: dict | None = None, run: str | None = None,
                  model_info: dict | None = None, t_max: float = 1.0, t_min: float = 0.0,
                  record_n: int | None = None, record_every: int = 1,
                  **sampler_kw) -> RunSpec:
        """The spec of a run of a built-in-protocol denoiser: eps and score models start at
        `sampling.safe_t_max`; labels are ``y`` or drawn from the seed (`draw_labels`);
        ``model_info`` defaults to `models.describe(model)`; ``sampler_kw`` are the
        sampler's options (`sampling.SAMPLER_OPTIONS`)."""
        settings = sampler_settings(sampler, steps, safe_t_max(model, t_max), t_min,
                                    schedule=model.schedule, **sampler_kw)
        labels = draw_labels(model.num_classes, n, seed, y)
        return cls.make(settings, describe(model) if model_info is None else model_info,
                        n=n, seed=seed, labels=labels, guidance=guidance, run=run,
                        record_n=record_n, record_every=record_every)

    @classmethod
    def make(cls, settings: dict, model: dict, *, n: int, seed: int, labels=None,
             guidance: dict | None = None, run: str | None = None,
             record_n: int | None = None, record_every: int = 1) -> RunSpec:
        """A spec from resolved parts; ``run`` defaults to 'unguided', or the guidance's
        kind."""
        labels = None if labels is None else tuple(int(v) for v in torch.as_tensor(labels))
        guidance = dict(guidance or UNGUIDED)
        return cls(dict(settings), dict(model), int(n), int(seed), labels, guidance,
                   _run_name(guidance, run), record_n, int(record_every))

    def with_guidance(self, guidance: dict | None, run: str | None = None) -> RunSpec:
        """The same run with other guidance (``run`` defaults as in `make`)."""
        guidance = dict(guidance or UNGUIDED)
        return dataclasses.replace(self, guidance=guidance, run=_run_name(guidance, run))

    # -- what it says ------------------------------------------------------------------------
    @property
    def sampler(self) -> str:
        return str(self.settings["name"])

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])

    @property
    def guided(self) -> bool:
        return self.guidance.get("kind", "none") != "none"

    @property
    def recorded(self) -> int:
        """How many samples are recorded (`recorded_count`)."""
        return recorded_count(self.n, self.record_n)

    @property
    def y(self) -> torch.Tensor | None:
        """The labels of all n samples."""
        return None if self.labels is None else torch.tensor(self.labels, dtype=torch.int64)

    def sampler_options(self) -> dict:
        """The built-in sampler's keywords: its settings but name and steps."""
        return {k: v for k, v in self.settings.items() if k not in ("name", "steps")}

    def attrs(self) -> dict:
        """The run attributes a recorder writes for this spec: sampler (with ``recorded``
        when a subset is recorded), model, guidance, seed."""
        sampler = recorded_settings(self.settings, self.n, self.record_n, self.record_every)
        return {"sampler": sampler, "model": self.model, "guidance": self.guidance,
                "seed": self.seed}

    # -- its baseline ------------------------------------------------------------------------
    def baseline(self, run: str = BASELINE) -> RunSpec:
        """The unguided run this one is compared with: the same in all but the guidance."""
        return self.with_guidance(UNGUIDED, run)

    def baseline_name(self, taken) -> str:
        """'unguided', or, when a run in ``taken`` has that name, a name with the settings."""
        if BASELINE not in taken:
            return BASELINE
        short = self.sampler.removesuffix("Scheduler")
        return f"{BASELINE}-{short}-{self.steps}-seed{self.seed}-n{self.n}"

    def matches(self, run) -> bool:
        """Whether recorded run ``run`` (an `io.Run`) is a complete run of this spec: the
        same sampler, model and seed attributes, guidance kind, recorded n and labels.
        Guidance is compared by kind, so any unguided run matches an unguided spec."""
        mine, theirs = _plain(self.attrs()), run.attrs
        if not run.complete or run.n != self.recorded:
            return False
        if (theirs.get("guidance") or UNGUIDED).get("kind", "none") != \
                self.guidance.get("kind", "none"):
            return False
        if any(theirs.get(k) != mine[k] for k in ("sampler", "model", "seed")):
            return False
        mine_labels = None if self.labels is None else self.labels[:self.recorded]
        if (mine_labels is None) != (run.labels is None):
            return False
        return mine_labels is None or np.array_equal(np.asarray(run.labels), mine_labels)


__all__ = ["BASELINE", "UNGUIDED", "RunSpec", "recorded_count", "recorded_settings"]
