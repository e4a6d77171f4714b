"""What `tune` returns: a row per candidate and the recommendation, as text, JSON and a
command line."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..analysis.statistics import Estimate
from .candidates import Candidate


@dataclass
class Row:
    """One candidate as far as the race drew it: rung 1 at n_final, 0 where it stopped at
    n_start; n samples in all (over the seeds), FD, its paired change against the baseline
    (None for the baseline), precision, recall and its paired change, mean |shift| by the
    independent meter (None without one), model evaluations per sample (counted), seconds
    per sample and per step (measured, sampling only), and the race's last estimate of its
    FD at n_final from fewer samples (`draws.fd_estimate`; None for the baseline)."""

    candidate: Candidate
    steps: int
    rung: int
    n: int
    fd: Estimate
    dfd: Estimate | None
    precision: Estimate
    recall: Estimate
    drecall: Estimate | None
    shift: Estimate | None
    model_evals: float
    s_per_sample: float
    s_per_step: float
    estimate: Estimate | None = None

    @property
    def name(self) -> str:
        return self.candidate.name

    def flags(self) -> list[str]:
        return self.candidate.flags(self.steps)

    def to_dict(self) -> dict:
        out = {"name": self.name, "flags": self.flags(), "sampler": self.candidate.sampler,
               "steps": self.steps, "sample_kw": dict(self.candidate.sample_kw),
               "guidance": dict(self.candidate.guidance)}
        for key, value in vars(self).items():
            if key not in ("candidate", "steps"):
                out[key] = value.to_dict() if isinstance(value, Estimate) else value
        return out


@dataclass
class TuneResult:
    """Every candidate's row (finalists first, best FD first), the race's two levels
    [(samples per seed, candidates besides the baseline drawn to it)], why candidates were
    left out, the feature space and meter, wall seconds, samples and model evaluations
    spent."""

    rows: list[Row]
    budget: int
    seeds: tuple[int, ...]
    plan: list[tuple[int, int]]
    notes: list[str] = field(default_factory=list)
    space: str = ""
    meter: str | None = None
    seconds: float = 0.0
    samples: int = 0
    model_evals: int = 0

    @property
    def baseline(self) -> Row:
        return next(r for r in self.rows if r.dfd is None)

    @property
    def best(self) -> Row:
        """The finalist with the lowest FD (the baseline included)."""
        final = max(r.rung for r in self.rows)
        return min((r for r in self.rows if r.rung == final), key=lambda r: r.fd.value)

    @property
    def recommended(self) -> Row:
        """The finalist with the lowest FD among those whose FD change against the
        baseline is resolved below zero; the baseline when none is: nothing beat it
        resolvably."""
        final = max(r.rung for r in self.rows)
        better = [r for r in self.rows
                  if r.rung == final and r.dfd is not None and r.dfd.hi < 0]
        return min(better, key=lambda r: r.fd.value) if better else self.baseline

    def command(self, model: str | None = None) -> str:
        """The `noiseshift sample` line of the recommendation."""
        words = ["noiseshift", "sample"] + (["--model", model] if model else [])
        return shlex.join(words + self.recommended.flags())

    def python_lines(self) -> str:
        """The recommendation as library calls on a denoiser ``model``."""
        rec = self.recommended.candidate
        lines = ["from noiseshift.sampling import sample"]
        model = "model"
        if rec.guidance:
            lines += ["from noiseshift.guidance import build_guidance",
                      "from noiseshift.pretrained import estimator_for",
                      f"guided, _ = build_guidance(model, estimator=estimator_for(model), "
                      f"{_kw(rec.guidance)})"]
            model = "guided"
        lines.append(f"x = sample({model}, 1000, {_kw(rec.keywords(self.recommended.steps))})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"budget": self.budget, "seeds": list(self.seeds),
                "plan": [list(p) for p in self.plan], "space": self.space,
                "meter": self.meter, "seconds": self.seconds, "samples": self.samples,
                "model_evals": self.model_evals, "notes": self.notes,
                "recommended": self.recommended.name, "best": self.best.name,
                "command": self.command(), "rows": [r.to_dict() for r in self.rows]}


def _kw(kw) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())
