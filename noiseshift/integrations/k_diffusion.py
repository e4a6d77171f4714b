"""Record and guide k-diffusion samplers (extra: ``pip install 'noiseshift[k-diffusion]'``).

k-diffusion's samplers hold the state in VE form, ``x = x0 + sigma eps``, for every denoiser
wrapper; its ``sample_*`` functions call ``callback({"x", "i", "sigma", "sigma_hat",
"denoised"})`` after each model evaluation and before the update, with ``x`` the state at
``sigma_hat``. You name the wrapper's sigma convention, which picks the schedule the run is
written in (docs/trajectory-format.md):

- ``"eps"`` (DiscreteEpsDDPMDenoiser, CompVisDenoiser, OpenAIDenoiser; aliases "ddpm",
  "compvis", "openai") and ``"v"`` (VDenoiser, CompVisVDenoiser): sigma = sqrt((1 - abar) /
  abar); written as ``vp-cosine``, t = 2/pi atan(sigma), states x / sqrt(1 + sigma^2).
- ``"edm"`` (k_diffusion.layers.Denoiser, EDM models): written as ``ve`` with EDM's range
  (sigma_min 0.002, sigma_max 80; pass ``schedule=`` for another), states x unchanged.

    rec = KDiffusionRecorder("traj.h5", convention="eps", sampler="sample_euler", seed=0)
    with rec:
        x = K.sampling.sample_euler(model, x, sigmas, callback=rec)
        rec.finish(x)

    guided = NAGDenoiser(model, estimator, 1.5, convention="eps")
    x = K.sampling.sample_dpmpp_2m(guided, x, sigmas)

Neither needs k-diffusion itself: they speak its protocol (a denoiser ``model(x, sigma,
**kw) -> denoised``, a callback dict), so this module never imports it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import NoiseshiftError
from ..guidance import DEFAULT_NAG_MODE
from ..io import TrajectoryWriter
from ..runspec import recorded_settings
from ..schedules import get_schedule
from .guided import OutputGuidance
from .levels import VP_FAMILY, map_level, to_schedule_form, ve_level

EDM_SCHEDULE = {"name": "ve", "sigma_min": 0.002, "sigma_max": 80.0}
CONVENTIONS = {"eps": VP_FAMILY, "ddpm": VP_FAMILY, "compvis": VP_FAMILY, "openai": VP_FAMILY,
               "v": VP_FAMILY, "edm": EDM_SCHEDULE}


def convention_schedule(convention: str, schedule=None):
    """The noiseshift schedule a convention's states are written in (``schedule`` wins)."""
    if convention not in CONVENTIONS:
        raise NoiseshiftError(f"unknown sigma convention {convention!r}; use one of "
                              f"{', '.join(CONVENTIONS)}")
    return get_schedule(schedule if schedule is not None else CONVENTIONS[convention])


def _sigma(value) -> float:
    return float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)


class KDiffusionRecorder:
    """A callback for any k-diffusion ``sample_*`` that writes one run of a trajectory file.

    ``max_samples`` records the first rows only, ``every`` every k-th callback (by k-diffusion's
    step index ``i``). Call `finish` with the sampler's result to write ``samples`` and mark
    the run complete; the file is created at the first callback.
    """

    def __init__(self, path, run: str = "unguided", *, convention: str, schedule=None,
                 sampler=None, guidance=None, model=None, seed: int | None = None,
                 labels=None, max_samples: int | None = None, every: int = 1,
                 steps: int | None = None, save_x0: bool = True, overwrite: bool = False):
        if not isinstance(every, int) or every < 1:
            raise NoiseshiftError(f"every must be a positive integer, got {every!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise NoiseshiftError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.schedule = convention_schedule(convention, schedule)
        self.path, self.run, self.every, self.max_samples = Path(path), run, every, max_samples
        sampler = {"name": sampler} if isinstance(sampler, str) else dict(sampler or {})
        if steps is not None:
            sampler.setdefault("steps", int(steps))
        sampler["library"] = "k-diffusion"
        self._kw = {"schedule": self.schedule, "sampler": sampler,
                    "guidance": guidance or {"kind": "none"},
                    "model": {"library": "k-diffusion", "convention": convention,
                              **(model or {})},
                    "seed": seed, "labels": labels, "save_x0": save_x0, "overwrite": overwrite,
                    "steps": None if steps is None else -(-int(steps) // every)}
        self.writer: TrajectoryWriter | None = None
        self.steps = 0
        TrajectoryWriter(self.path, run, n=1, shape=(1,), schedule=self.schedule,
                         overwrite=overwrite)  # the writer's checks, before sampling

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.max_samples is None else x[: self.max_samples]

    def __call__(self, info: dict) -> None:
        if int(info.get("i", self.steps)) % self.every:
            return
        x = self._rows(info["x"].detach())
        sigma = _sigma(info.get("sigma_hat", info.get("sigma")))
        t, k = map_level(*ve_level(sigma), self.schedule)
        if self.writer is None:
            n_all = info["x"].shape[0]
            kw = {**self._kw, "sampler": recorded_settings(self._kw["sampler"], n_all,
                                                           self.max_samples, self.every)}
            self.writer = TrajectoryWriter(self.path, self.run, n=x.shape[0],
                                           shape=tuple(x.shape[1:]), **kw)
        x0 = info.get("denoised")
        self.writer.callback({"i": self.steps, "t": t, "x": to_schedule_form(x, k).cpu(),
                              "x0_pred": None if x0 is None else
                              self._rows(x0.detach()).float().cpu()})
        self.steps += 1

    def finish(self, samples: torch.Tensor) -> None:
        """Write the sampler's result (sigma = 0: x0, the same in every form)."""
        if self.writer is None:
            raise NoiseshiftError("no step was recorded: pass this recorder as callback= to a "
                                  "k-diffusion sample_* function")
        self.writer.finish(self._rows(samples.detach()).float().cpu())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> KDiffusionRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NAGDenoiser(torch.nn.Module):
    """A k-diffusion denoiser ``(x, sigma, **kw) -> denoised`` with estimator-based NAG.

    The wrapped denoiser's x0 is edited by noiseshift's NAG in any mode of
    `guidance.MODES` without a null-t branch (`ReadingStepNAG` in mode "estimator-step", the
    default; `EstimatorGradientNAG` in modes "estimator-noise" and "estimator"; the others
    are refused in one line) and epsilon scaling with ``eps_scale``, in the convention's
    schedule.
    In mode "estimator" and the VP conventions this adds ``w sigma^2 / sqrt(1 + sigma^2) * g``
    to denoised, g the estimator's gradient in vp-cosine coordinates ("estimator-noise"
    projects g on the predicted noise); "estimator-step" moves denoised along the predicted
    noise by w / (1 + w) of the step that brings the estimator's reading back to that of
    true states.
    ``scale=0`` returns the wrapped denoiser's output untouched.
    """

    def __init__(self, model, estimator, scale: float, *, convention: str,
                 mode: str = DEFAULT_NAG_MODE, interval=None, eps_scale=None, schedule=None):
        super().__init__()
        self.inner_model = model
        self.schedule = convention_schedule(convention, schedule)
        self.editor = OutputGuidance(estimator, scale, schedule=self.schedule, prediction="x0",
                                     mode=mode, interval=interval, eps_scale=eps_scale,
                                     library="k-diffusion")
        self.guidance = self.editor.guidance

    def forward(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        denoised = self.inner_model(x, sigma, **kwargs)
        if self.editor.passthrough:
            return denoised
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        out = denoised
        for value in torch.unique(sig):
            rows = (sig == value).nonzero().squeeze(1).to(x.device)
            t, k = map_level(*ve_level(float(value)), self.schedule)
            x0 = denoised[rows].double()
            guided = self.editor(x0, to_schedule_form(x[rows], k), t)
            if guided is not x0:
                out = out.clone() if out is denoised else out
                out[rows] = guided.to(denoised.dtype)
        return out


__all__ = ["CONVENTIONS", "EDM_SCHEDULE", "KDiffusionRecorder", "NAGDenoiser",
           "convention_schedule"]
