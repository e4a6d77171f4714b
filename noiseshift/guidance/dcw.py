"""DCW: differential correction of the state after each sampler step (Yu et al., CVPR 2026,
"Elucidating the SNR-t Bias of Diffusion Probabilistic Models", arXiv 2604.16044; code
AMAP-ML/DCW).

What their code does (generate.py's `ablation_sampler`, FlowMatchEulerDiscreteScheduler.step):
after the sampler's update, with ``x_next`` the new state and ``x0`` the denoised estimate of
the model call that made it,

    x_next <- x_next + lambda_i (x_next - x0)

- ``wavelet`` (their recommended `dcw_low`, the default here): only in the approximation (LL)
  band of a one-level orthonormal 2-d Haar transform, the detail bands untouched, with
  lambda_i = scale * t_i / sigma_max (t_i the step's starting noise level; "inverse
  variance dynamic coefficient"); their CIFAR-10 EDM script uses scale 0.005;
- ``pixel`` (their Eq. 17, the form the FlowMatch scheduler ships): every pixel, with a
  constant lambda = scale.

Choices made here: t is noiseshift's t in [0, 1] (t = 1 pure noise), so t_i / sigma_max is
t_i; the state and x0 are the sampler's own (noiseshift's x = alpha x0 + sigma eps, as their
flow scheduler uses its own x = (1 - sigma) x0 + sigma eps); a positive scale moves the state
away from x0, as theirs does; on odd image sides the row / column the Haar blocks leave out
takes the pixel form at the low band's weight; vectors have no 2-d bands, so only the pixel
form applies to them; the built-in samplers end on the model's x0 (``final_denoise``), so
the last step is not corrected, and Heun's x0 is its first call's (theirs, the corrector's).
Their high-band and two-band variants are not built.

`DCW` is a guidance wrapper that leaves the model's output alone and carries the correction
as ``after_step``: `sampling.sample` finds it in the wrapper chain (``sampler_hook``) and
calls it through the sampler's ``step_hook``; other samplers (the diffusers adapter) take it
from `guidance.step_hook_of`.
"""

from __future__ import annotations

import torch

from ..errors import NoiseshiftError
from ..estimators.classical import haar_inverse, haar_level
from .base import Guided

#: form -> how lambda follows t ("t": scale * t; "constant": scale), as their code ships it.
DCW_FORMS = {"wavelet": "t", "pixel": "constant"}
DEFAULT_DCW_FORM = "wavelet"


def check_form(form: str) -> str:
    if form not in DCW_FORMS:
        raise NoiseshiftError(f"unknown DCW form {form!r}; choose one of "
                              f"{', '.join(DCW_FORMS)}")
    return form


def strength(scale: float, t: float, form: str = DEFAULT_DCW_FORM) -> float:
    """lambda at a step that starts at time t: scale * t for the wavelet form, scale for the
    pixel form (`DCW_FORMS`)."""
    return float(scale) * float(t) if DCW_FORMS[check_form(form)] == "t" else float(scale)


def band_correct(x: torch.Tensor, target: torch.Tensor, low: float,
                 high: float) -> torch.Tensor:
    """x + lambda (x - target) band by band: lambda = ``low`` in the Haar approximation band,
    ``high`` in the detail bands, of images (N, C, H, W) (`estimators.classical.haar_level`).
    In float64, returned in x's dtype."""
    if x.ndim < 3 or min(x.shape[-2:]) < 2:
        raise NoiseshiftError(f"the wavelet form of DCW needs images at least 2x2; states have "
                              f"shape {tuple(x.shape[1:])}: use the pixel form")
    d = (x - target).double()
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    corr = low * d  # what the Haar blocks leave out of an odd side
    ll, details = haar_level(d)
    corr[..., :h, :w] = haar_inverse(low * ll, tuple(high * b for b in details))
    return (x.double() + corr).to(x.dtype)


def dcw_step(x_next: torch.Tensor, x0: torch.Tensor, t: float, scale: float,
             form: str = DEFAULT_DCW_FORM) -> torch.Tensor:
    """The state after DCW: ``x_next`` corrected against the step's ``x0`` at strength
    `strength` (scale, t, form); in float64, returned in x_next's dtype."""
    lam = strength(scale, t, form)
    if form == "pixel":
        return (x_next.double() + lam * (x_next - x0).double()).to(x_next.dtype)
    return band_correct(x_next, x0, lam, 0.0)


class DCW(Guided):
    """DCW at ``scale`` in ``form`` (`DCW_FORMS`) on the steps of any sampler: the model's
    output passes through untouched; `after_step` is the sampler's step hook."""

    def __init__(self, model, scale: float, form: str = DEFAULT_DCW_FORM):
        super().__init__(model)
        self.scale, self.form = float(scale), check_form(form)
        shape = (getattr(model, "config", None) or {}).get("shape")
        if form == "wavelet" and shape is not None and len(shape) < 3:
            raise NoiseshiftError(f"the wavelet form of DCW needs images; states have shape "
                                  f"{tuple(shape)}: use --dcw-form pixel")

    def forward(self, x, t, y=None, **kw):
        return self.model(x, t, y=y, **kw)

    def sampler_hook(self, model, y, noise):
        """`sampling.sample` collects this from the wrapper chain (`hooks.model_hooks`)."""
        return self.after_step

    def after_step(self, info: dict) -> torch.Tensor:
        """The state to go on from, given a sampler's step ``info`` (sampling.py)."""
        return dcw_step(info["x_next"], info["x0_pred"], info["t"], self.scale, self.form)

    def describe(self) -> dict:
        return {"dcw": {"scale": self.scale, "form": self.form,
                        "strength": DCW_FORMS[self.form]}}


__all__ = ["DCW", "DCW_FORMS", "DEFAULT_DCW_FORM", "band_correct", "check_form", "dcw_step",
           "strength"]
