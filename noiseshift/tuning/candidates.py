"""The corrections `tune` searches, one line each in `CANDIDATES`, and what each costs.

A candidate is a built-in sampler with its keywords (`sampling.sample`) and guidance
keywords (`guidance.build_guidance`); its steps follow from the budget of model evaluations
per sample, so every candidate spends at most the same compute on the network. A new
correction is one more line in the table: a `sample` keyword goes in ``sample_kw``, a
guidance wrapper's in ``guidance``; `Candidate.flags` writes both as `noiseshift sample`
flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..defaults import DEFAULT_SAMPLER
from ..errors import NoiseshiftError
from ..guidance import MODES

#: Model calls per step of each built-in sampler. With ``final_denoise`` (the default) the
#: last step is one call whatever the sampler: it returns that call's x0 prediction.
CALLS_PER_STEP = {"euler": 1, "euler-maruyama": 1, "ddim": 1, "heun": 2, "dpmpp-2m": 1}

#: `build_guidance` / `sample` keywords whose `noiseshift sample` flag is not the keyword
#: with dashes.
FLAG_NAMES = {"interval": "--guidance-interval"}


@dataclass(frozen=True)
class Candidate:
    """One configuration `tune` may recommend.

    name: short, for the table. sampler: a built-in sampler. sample_kw: its keywords
    (``diffusion``, ``eta``, ...). guidance: `build_guidance` keywords. evals: model
    evaluations per model call (2 where guidance runs a second branch of the network, as
    the classifier-free NAG modes do); an estimator pass is not a model evaluation, its
    cost shows in the measured time per step.
    """

    name: str
    sampler: str = DEFAULT_SAMPLER
    sample_kw: Mapping = field(default_factory=dict, hash=False)
    guidance: Mapping = field(default_factory=dict, hash=False)
    evals: int = 1

    def __post_init__(self):
        for key in ("sample_kw", "guidance"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))

    @property
    def nag_mode(self):
        mode = self.guidance.get("nag_mode")
        return MODES[mode] if mode is not None and self.guidance.get("nag_scale") else None

    @property
    def needs_estimator(self) -> bool:
        return self.nag_mode is not None and self.nag_mode.needs_estimator

    @property
    def needs_null_t(self) -> bool:
        return self.nag_mode is not None and self.nag_mode.needs_null_t

    @property
    def unguided(self) -> bool:
        return not self.guidance

    def model_evals(self, steps: int) -> int:
        """Model evaluations per sample at ``steps``: a Langevin corrector's moves
        (``guidance["corrector"]`` = (snr, moves, ...)) follow every update, and with
        ``final_denoise`` the last step makes none."""
        per_step = CALLS_PER_STEP[self.sampler]
        final = self.sample_kw.get("final_denoise", True)
        last = 1 if final else per_step
        corrector = self.guidance.get("corrector")
        moves = int(corrector[1]) if corrector is not None and len(corrector) > 1 else (
            1 if corrector is not None else 0)
        updates = steps - 1 if final else steps
        return self.evals * (per_step * (steps - 1) + last + moves * updates)

    def steps_for(self, budget: int) -> int | None:
        """The most steps whose model evaluations fit ``budget``; None if not even one."""
        if self.model_evals(1) > budget:
            return None
        steps = 1
        while self.model_evals(steps + 1) <= budget:
            steps += 1
        return steps

    def flags(self, steps: int) -> list[str]:
        """The `noiseshift sample` flags this candidate stands for."""
        out = ["--sampler", self.sampler, "--steps", str(steps)]
        for key, value in {**self.sample_kw, **self.guidance}.items():
            flag = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
            if isinstance(value, (tuple, list)):
                value = ",".join(f"{v:g}" for v in value)
            elif isinstance(value, float):
                value = f"{value:g}"
            out += [flag, str(value)]
        return out

    def keywords(self, steps: int) -> dict:
        """The `sampling.sample` keywords (sampler, steps and ``sample_kw``)."""
        return {"sampler": self.sampler, "steps": steps, **self.sample_kw}


def _step(scale: float) -> dict:
    return {"nag_mode": "estimator-step", "nag_scale": scale}


#: What `tune` searches on today's main. The first is the baseline: the default sampler,
#: unguided. CFG is not here: it changes what is sampled, not how well.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("em", "euler-maruyama"),
    Candidate("euler", "euler"),
    Candidate("heun", "heun"),
    Candidate("ddim-eta1", "ddim", {"eta": 1.0}),
    Candidate("em-g1", "euler-maruyama", {"diffusion": 1.0}),
    Candidate("em-g0.5", "euler-maruyama", {"diffusion": 0.5}),
    Candidate("em+step1.5", guidance=_step(1.5)),
    Candidate("em+step3", guidance=_step(3.0)),
    Candidate("em+noise4", guidance={"nag_mode": "estimator-noise", "nag_scale": 4.0}),
    Candidate("em+grad0.5", guidance={"nag_mode": "estimator", "nag_scale": 0.5}),
    Candidate("em+eps0.99", guidance={"eps_scale": 0.99}),
    Candidate("em+eps1.01", guidance={"eps_scale": 1.01}),
    Candidate("em+tshift", guidance={"time_shift": (0.1, 0.3)}),
    Candidate("euler+step1.5", "euler", guidance=_step(1.5)),
    Candidate("heun+step1.5", "heun", guidance=_step(1.5)),
    Candidate("em-g1+step1.5", "euler-maruyama", {"diffusion": 1.0}, _step(1.5)),
    Candidate("em-g1+step3", "euler-maruyama", {"diffusion": 1.0}, _step(3.0)),
    Candidate("em-g0.5+step1.5", "euler-maruyama", {"diffusion": 0.5}, _step(1.5)),
    Candidate("em-g0.5+step3", "euler-maruyama", {"diffusion": 0.5}, _step(3.0)),
    Candidate("em+cfcal0.5", guidance={"nag_mode": "cf-calibrated", "nag_scale": 0.5},
              evals=2),
    Candidate("dpmpp-2m", "dpmpp-2m"),
    Candidate("dpmpp-2m+step1.5", "dpmpp-2m", guidance=_step(1.5)),
    Candidate("dpmpp-2m+corr0.3", "dpmpp-2m", guidance={"corrector": (0.3, 1)}),
    Candidate("ddim", "ddim"),
    Candidate("ddim+dcw-0.005", "ddim", guidance={"dcw": -0.005, "dcw_form": "pixel"}),
    Candidate("em+dcw0.005", guidance={"dcw": 0.005}),
    Candidate("em+step1.5+dcw0.005", guidance={**_step(1.5), "dcw": 0.005}),
    Candidate("dpmpp-2m+karras", "dpmpp-2m", {"timesteps": "karras"}),
    Candidate("dpmpp-2m+logsnr", "dpmpp-2m", {"timesteps": "logsnr:smin=0.01"}),
)


def fitting(candidates, budget: int, model, *, has_estimator: bool = True
            ) -> tuple[list[tuple[Candidate, int]], list[str]]:
    """([(candidate, steps)] that fit ``budget`` and ``model``, [why each other one was
    left out])."""
    if budget < 1:
        raise NoiseshiftError(f"the budget must be at least 1 model evaluation, got {budget}")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise NoiseshiftError("candidate names must be distinct")
    keep, notes = [], []
    for c in candidates:
        steps = c.steps_for(budget)
        if steps is None:
            notes.append(f"{c.name}: one step costs {c.model_evals(1)} model evaluations, "
                         f"over the budget of {budget}")
        elif c.needs_null_t and not getattr(model, "supports_null_t", False):
            notes.append(f"{c.name}: needs a model trained with --t-dropout")
        elif c.needs_estimator and not has_estimator:
            notes.append(f"{c.name}: needs a noise-level estimator")
        else:
            keep.append((c, steps))
    return keep, notes
