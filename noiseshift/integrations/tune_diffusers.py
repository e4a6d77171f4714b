"""`noiseshift tune --model diffusers:DIR`: at a budget of model evaluations per sample,
which correction of a user's diffusers pipeline gives the best samples.

The search is `tuning.tune` itself (the race, paired scores, the same table); this
module says what a pipeline's candidates are (`PIPELINE_CANDIDATES`: swapped solvers,
spacings and Karras sigmas, epsilon scaling, DCW, estimator NAG, the retimed grid) and how
one is drawn (`PipelineModel.tune_draw`, the search's draw for a pipeline):

    from noiseshift.integrations.tune_diffusers import tune_pipeline
    pipe = load_pipeline("ddpm-digits/", scheduler="ddim", spacing="trailing")
    res = tune_pipeline(pipe, 10, load_data("digits"), source="diffusers:ddpm-digits/")
    res.command(), res.python_lines()

Sample i of every candidate draws from its own generator, seeded from (seed, i)
(`sampling.sample_seed`), handed to the pipeline as its list of per-sample generators, and
the pipeline is called on fixed blocks of rows: sample i is the same whichever candidate,
rung or block draws it, so every comparison is paired. Model evaluations are counted on the
network's forward, not assumed.
"""

from __future__ import annotations

import inspect
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..analysis.audit import fit_mixture
from ..errors import NoiseshiftError
from ..guidance import MODES
from ..pretrained import NAMES, cached_estimator_path, get_estimator
from ..runtime import resolve_device
from ..tuning import TuneResult, tune
from . import require
from .diffusers import DCW_SCHEDULERS, SCHEDULERS, UNSCALED_LOOPS, load_pipeline, pipeline_shape
from .guided import check_mode
from .pipeline_draws import PipelineModel, build, using
from .pipeline_runs import PREFIX, grid_timesteps
from .retime_diffusers import DDIM_AS, retime_scheduler
from .schedulers import SchedulerView

__all__ = ["PIPELINE_CANDIDATES", "PipelineCandidate", "PipelineModel", "PipelineTuneResult",
           "applicable", "tune_pipeline"]

#: Keywords some pipelines' loops pass to ``scheduler.step`` whatever its signature: a
#: scheduler whose step does not take them cannot run in that loop.
LOOP_KWARGS = {"DDPMPipeline": ("generator",),
               "DDIMPipeline": ("eta", "use_clipped_model_output", "generator")}
#: `pipeline_guide` keyword -> `noiseshift sample` flag.
GUIDE_FLAGS = {"nag_scale": "--nag-scale", "nag_mode": "--nag-mode",
               "eps_scale": "--eps-scale", "dcw": "--dcw", "dcw_form": "--dcw-form"}
#: The scheduler config keys that fix its noise table (what the retimed grid is built on).
TABLE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
              "trained_betas", "prediction_type")
#: diffusers class -> the `--scheduler` name of `noiseshift sample`.
CLI_NAMES = {cls: name for name, (cls, _) in SCHEDULERS.items()}


@dataclass(frozen=True)
class PipelineCandidate:
    """One configuration of a pipeline `tune` may recommend.

    scheduler: a diffusers scheduler class built from the loaded scheduler's config (None:
    the scheduler as loaded); config: ``from_config`` keywords on top; guidance:
    `pipeline_guide` keywords (nag_scale, nag_mode, eps_scale, dcw, dcw_form); retime: run
    the shift-aware grid (`retime_diffusers`) instead of the spacing; calls: model calls per
    step (Heun's 2). `applicable` fills in the class, the spacing and the retimed grid."""

    name: str
    scheduler: str | None = None
    config: Mapping = field(default_factory=dict, hash=False)
    guidance: Mapping = field(default_factory=dict, hash=False)
    retime: bool = False
    calls: int = 1
    timesteps: tuple[int, ...] | None = None

    def __post_init__(self):
        for key in ("config", "guidance"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))

    # what `tuning` reads of a candidate
    @property
    def sampler(self) -> str:
        return self.scheduler or "as loaded"

    @property
    def sample_kw(self) -> Mapping:
        return self.config

    @property
    def nag_mode(self):
        mode = self.guidance.get("nag_mode", "estimator-step")
        return MODES[mode] if self.guidance.get("nag_scale") else None

    @property
    def needs_estimator(self) -> bool:
        return self.nag_mode is not None

    needs_null_t = False

    def model_evals(self, steps: int) -> int:
        """Model evaluations per sample at ``steps``: a two-call scheduler (Heun) makes one
        call at its last step."""
        return self.calls * steps - (self.calls - 1)

    def steps_for(self, budget: int) -> int | None:
        """The most steps whose model evaluations fit ``budget``; None if not even one."""
        steps = (budget + self.calls - 1) // self.calls
        return steps if steps >= 1 else None

    def flags(self, steps: int) -> list[str] | None:
        """The `noiseshift sample --model diffusers:DIR` flags (``--estimator`` apart), or
        None where no flag sets this scheduler or one of its keywords."""
        name = CLI_NAMES.get(self.scheduler)
        if name is None:
            return None
        out = ["--scheduler", name]
        defaults = _defaults(self.scheduler)
        for key, value in self.config.items():
            if key == "timestep_spacing":
                out += ["--spacing", str(value)]
            elif defaults.get(key, object()) != value:
                return None
        out += ["--steps", str(steps)]
        if self.timesteps is not None:
            out += ["--timesteps", ",".join(map(str, self.timesteps))]
        for key, value in self.guidance.items():
            value = ",".join(f"{v:g}" for v in value) if isinstance(value, (tuple, list)) \
                else f"{value:g}" if isinstance(value, float) else str(value)
            out += [GUIDE_FLAGS[key], value]
        return out


def _defaults(cls_name: str) -> dict:
    cls = getattr(require("diffusers"), cls_name)
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}


def _step(scale: float) -> dict:
    return {"nag_mode": "estimator-step", "nag_scale": scale}


_DPM = {"solver_order": 2, "algorithm_type": "dpmsolver++"}
_TRAIL = {"timestep_spacing": "trailing"}

#: What `tune` searches on a pipeline. The first is the baseline: the scheduler as loaded,
#: unguided. Guided candidates without a scheduler guide the loaded one.
PIPELINE_CANDIDATES: tuple[PipelineCandidate, ...] = (
    PipelineCandidate("as-loaded"),
    PipelineCandidate("ddim-trailing", "DDIMScheduler", _TRAIL),
    PipelineCandidate("ddim-linspace", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    PipelineCandidate("ddim-leading", "DDIMScheduler", {"timestep_spacing": "leading"}),
    PipelineCandidate("dpm++2m", "DPMSolverMultistepScheduler", {**_TRAIL, **_DPM}),
    PipelineCandidate("dpm++2m-lin", "DPMSolverMultistepScheduler",
                      {"timestep_spacing": "linspace", **_DPM}),
    PipelineCandidate("dpm++2m-karras", "DPMSolverMultistepScheduler",
                      {**_DPM, "use_karras_sigmas": True}),
    PipelineCandidate("unipc", "UniPCMultistepScheduler", _TRAIL),
    PipelineCandidate("unipc-karras", "UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    PipelineCandidate("euler", "EulerDiscreteScheduler", _TRAIL),
    PipelineCandidate("euler-karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    PipelineCandidate("heun", "HeunDiscreteScheduler", _TRAIL, calls=2),
    PipelineCandidate("ddpm-trailing", "DDPMScheduler", _TRAIL),
    PipelineCandidate("+eps0.99", guidance={"eps_scale": 0.99}),
    PipelineCandidate("+eps1.005", guidance={"eps_scale": 1.005}),
    PipelineCandidate("+dcw0.005", guidance={"dcw": 0.005}),
    PipelineCandidate("+dcw-0.005", guidance={"dcw": -0.005}),
    PipelineCandidate("+step1.5", guidance=_step(1.5)),
    PipelineCandidate("+step3", guidance=_step(3.0)),
    PipelineCandidate("+noise1.5", guidance={"nag_mode": "estimator-noise", "nag_scale": 1.5}),
    PipelineCandidate("+grad0.5", guidance={"nag_mode": "estimator", "nag_scale": 0.5}),
    PipelineCandidate("+reading0.75", guidance={"nag_mode": "estimator-reading",
                                                "nag_scale": 0.75}),
    PipelineCandidate("dpm++2m+step1.5", "DPMSolverMultistepScheduler", {**_TRAIL, **_DPM},
                      _step(1.5)),
    PipelineCandidate("+retimed", retime=True),
)


# -- which candidates a pipeline can run ------------------------------------------------------

def applicable(pipe, candidates, budget: int, data=None
               ) -> tuple[list[PipelineCandidate], list[str]]:
    """([candidates ``pipe`` can run, each with its scheduler class and spacing named],
    [why each other one was left out]). The first must be runnable: it is the baseline."""
    base, keep, notes, seen = pipe.scheduler, [], [], {}
    for c in candidates:
        try:
            r = _resolve(pipe, base, c, budget, data)
        except NoiseshiftError as e:
            if not keep:
                raise
            notes.append(f"{c.name}: {e.problem}")
            continue
        key = (r.scheduler, repr(sorted(build(base, r).config.items())), r.timesteps,
               repr(sorted(r.guidance.items())))
        if key in seen:
            same = "the scheduler as loaded" if seen[key] == keep[0].name else seen[key]
            notes.append(f"{c.name}: the same as {same}")
            continue
        seen[key] = r.name
        keep.append(r)
    return keep, notes


def _resolve(pipe, base, c: PipelineCandidate, budget: int, data) -> PipelineCandidate:
    """``c`` with its class, the spacing it runs and the retimed grid; a NoiseshiftError
    saying why ``pipe`` cannot run it."""
    cls = c.scheduler or type(base).__name__
    # the baseline is named after the loaded scheduler; "+eps0.99" guides that scheduler
    name = c.name if c.scheduler or c.name.startswith("+") else _short(base)
    flow = "FlowMatch" in type(base).__name__
    if ("FlowMatch" in cls) != flow:
        raise NoiseshiftError(f"{cls} does not fit a {'flow' if flow else 'diffusion'} model")
    try:
        sch = build(base, PipelineCandidate(c.name, cls, c.config))
    except Exception as e:  # diffusers refuses a config in many ways
        raise NoiseshiftError(f"{cls} refuses {dict(c.config)} ({type(e).__name__})") from None
    config = {**({"timestep_spacing": sch.config.timestep_spacing}
                 if "timestep_spacing" in sch.config else {}), **c.config}
    _check_loop(pipe, sch)
    _check_guidance(c.guidance, sch)
    if c.guidance.get("dcw") and cls not in DCW_SCHEDULERS:
        raise NoiseshiftError(f"DCW needs a one-call, memoryless step, not {cls}")
    if c.calls == 1 and getattr(sch, "order", 1) != 1:
        raise NoiseshiftError(f"{cls} calls the model {sch.order} times a step")
    out = PipelineCandidate(name, cls, config, c.guidance, c.retime, c.calls)
    if c.retime:
        out = _retimed(pipe, out, sch, budget, data)
    return out


def _check_guidance(guidance: Mapping, sch) -> None:
    """One line where ``sch``'s model output cannot be guided as asked (`diffusers.Guide`'s
    own checks, made before anything is drawn)."""
    if guidance.get("nag_scale"):
        check_mode(guidance.get("nag_mode", "estimator-step"), "diffusers")
    view = SchedulerView(sch)
    if view.parametrisation() is None and (guidance.get("nag_scale") or
                                           guidance.get("eps_scale") is not None):
        raise NoiseshiftError(f"{view.name}'s model output ({view.prediction_type!r}) is not "
                              f"eps, v, x0 or a flow velocity")


def _short(scheduler) -> str:
    """The loaded scheduler's short name: its `--scheduler` name and spacing."""
    cls = type(scheduler).__name__
    name = CLI_NAMES.get(cls, cls.removesuffix("Scheduler").lower())
    spacing = scheduler.config.get("timestep_spacing")
    return f"{name}-{spacing}" if spacing else name


def _check_loop(pipe, sch) -> None:
    """One line where the pipeline's own loop cannot run ``sch``."""
    kind = type(pipe).__name__
    init = float(getattr(sch, "init_noise_sigma", 1.0))
    if kind in UNSCALED_LOOPS and abs(init - 1.0) > 1e-6:
        raise NoiseshiftError(f"{kind}'s loop neither scales the initial noise nor calls "
                              f"scale_model_input, which {type(sch).__name__} needs")
    params = inspect.signature(sch.step).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [k for k in LOOP_KWARGS.get(kind, ()) if k not in params and not takes_any]
    if missing:
        raise NoiseshiftError(f"{kind}'s loop passes {', '.join(missing)} to step, which "
                              f"{type(sch).__name__}.step does not take")


def _retimed(pipe, c: PipelineCandidate, sch, budget: int, data) -> PipelineCandidate:
    """``c`` on the shift-aware grid of its scheduler at the budget's steps
    (`retime_diffusers.retime_scheduler`, a perfect model of a mixture fitted to ``data``)."""
    if data is None:
        raise NoiseshiftError("the retimed grid needs --data")
    steps = c.steps_for(budget)
    spacing = c.config.get("timestep_spacing")
    config = {k: sch.config[k] for k in TABLE_KEYS if sch.config.get(k) is not None}
    res = retime_scheduler(fit_mixture(data), c.scheduler, steps=steps, spacing=spacing,
                           config=config, n=256, iterations=2)
    grid = tuple(int(v) for v in res.meta["diffusers"]["timesteps"])
    with using(pipe, build(pipe.scheduler, c)):
        grid_timesteps(pipe, grid)  # checks the grid; refuses a scheduler without one
    return PipelineCandidate(c.name, c.scheduler, c.config, c.guidance, True, c.calls, grid)


# -- the search and its result ----------------------------------------------------------------

@dataclass
class PipelineTuneResult(TuneResult):
    """`TuneResult` for a pipeline: its command line is `noiseshift sample --model
    diffusers:DIR` (None where no flag sets the recommended scheduler), its Python lines
    load and call the pipeline. ``source``: the --model value; ``estimator_ref``: the
    checkpoint the NAG candidates read."""

    source: str = ""
    estimator_ref: str | None = None

    def command(self, model: str | None = None) -> str | None:
        flags = self.recommended.flags()
        if flags is None:
            return None
        words = ["noiseshift", "sample", "--model", model or self.source, *flags]
        if self.recommended.candidate.needs_estimator:
            words += ["--estimator", str(self.estimator_ref)]
        return shlex.join(words)

    def python_lines(self) -> str:
        """The recommendation as diffusers calls, with noiseshift's `guide` and
        `custom_grid` where it needs them."""
        c, steps = self.recommended.candidate, self.recommended.steps
        cls, config = c.scheduler, dict(c.config)
        if c.timesteps is not None and cls == "DDIMScheduler":
            cls, config = DDIM_AS[0], {**DDIM_AS[1]}
        folder = self.source.removeprefix(PREFIX)
        lines = ["import diffusers, torch",
                 f"pipe = diffusers.DiffusionPipeline.from_pretrained({folder!r})",
                 f"pipe.scheduler = diffusers.{cls}.from_config(pipe.scheduler.config"
                 + "".join(f", {k}={v!r}" for k, v in config.items()) + ")"]
        blocks = []
        if c.timesteps is not None:
            lines.append("from noiseshift.integrations.retime_diffusers import custom_grid")
            blocks.append(f"custom_grid(pipe.scheduler, timesteps={list(c.timesteps)!r})")
        if c.guidance:
            blocks.append(self._guide_line(c, lines))
        call = (f"pipe(batch_size=1000, num_inference_steps={steps}, "
                f"generator=torch.Generator().manual_seed({self.seeds[0]})).images")
        if not blocks:
            return "\n".join([*lines, f"images = {call}"])
        return "\n".join([*lines, f"with {', '.join(blocks)}:", f"    images = {call}"])

    def _guide_line(self, c: PipelineCandidate, lines: list) -> str:
        lines.append("from noiseshift.integrations.diffusers import guide")
        g = dict(c.guidance)
        est = "None"
        if g.get("nag_scale"):
            lines += ["from noiseshift.pretrained import get_estimator",
                      f"est = get_estimator({str(self.estimator_ref)!r})"]
            est = "est"
        scale = g.pop("nag_scale", 0.0)
        return f"guide(pipe, {est}, {scale!r}" + "".join(
            f", {'mode' if k == 'nag_mode' else k}={v!r}" for k, v in g.items()) + ")"


def tune_pipeline(pipe, budget_nfe: int, data, *, source: str, seeds=(0,),
                  candidates=PIPELINE_CANDIDATES, estimator=None,
                  estimator_ref: str | None = None, **search) -> PipelineTuneResult:
    """`tuning.tune` over ``candidates`` on the pipeline ``pipe`` (loaded from ``source``,
    "diffusers:DIR") at ``budget_nfe`` model evaluations per sample, scored on ``data`` (a
    `Dataset` of the pipeline's state shape). ``estimator`` guides the NAG candidates (left
    out without it); ``estimator_ref`` is its checkpoint for the command line. ``search``:
    `tune`'s keywords (n_start, n_final, keep, finalists, n_boot, progress, meter, space)."""
    shape = pipeline_shape(pipe)
    if shape is None or tuple(shape) != tuple(data.shape):
        raise NoiseshiftError(f"tune scores a pipeline's final states against --data: this "
                              f"pipeline's states have shape {shape}, the data "
                              f"{tuple(data.shape)} (latent and text-to-image pipelines are "
                              f"not supported yet)")
    keep, notes = applicable(pipe, candidates, budget_nfe, data)
    res = tune(PipelineModel(pipe), budget_nfe, data, seeds=seeds, candidates=keep,
               estimator=estimator, device=str(pipe.device), **search)
    res.notes = notes + res.notes
    return PipelineTuneResult(**vars(res), source=source, estimator_ref=estimator_ref)


def load_for_tune(model: str, *, scheduler=None, spacing=None, device: str = "auto"):
    """The pipeline ``model`` ("diffusers:DIR" or a Hub id in the local cache) with
    ``scheduler`` / ``spacing`` (`load_pipeline`), its progress bars off."""
    folder = model[len(PREFIX):]
    if not folder:
        raise NoiseshiftError("--model diffusers: needs a pipeline folder or Hub id")
    pipe = load_pipeline(folder, scheduler=scheduler, spacing=spacing,
                         device=resolve_device(device), progress=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_estimator(pipe, name_or_path, spec: dict, data, device: str = "auto",
                       progress=None) -> tuple[object, str]:
    """(the estimator the NAG candidates read, the checkpoint `sample --estimator` takes):
    a checkpoint, or by name (default ``learned``, trained on first use) for ``data`` under
    the schedule the pipeline's states map onto."""
    family = SchedulerView(pipe.scheduler).family
    key = str(name_or_path or "learned")
    if key in NAMES and key != "learned":
        raise NoiseshiftError(f"--estimator {key}: NAG on a pipeline reads a learned "
                              f"estimator (learned, or a checkpoint)")
    est = get_estimator(key, data, family, device=device, progress=progress)
    path = cached_estimator_path(spec, family) if key == "learned" else key
    return est, str(path)
