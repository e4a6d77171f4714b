"""NAG from a noise-level estimator: ``score(x|t) + w grad_x log p(t|x)``, and what guidance
reads off an estimator (its posterior's gradient, its reading t')."""

from __future__ import annotations

import numpy as np
import torch

from ..estimators.base import interpolate_log_posterior, log_posterior_grad
from .base import DEFAULT_INTERVAL, Guided, _in_interval, _interval, _mask, _regular, _rows

# Estimator readings are clipped away from t = 0, where sigma -> 0 makes a score infinite.
_T_READ_MIN = 1e-3


def grad_log_posterior(estimator, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad_x log p(t|x) at the scheduled t of each row, as float64.

    Uses ``estimator.grad_log_posterior`` when there is one, else differentiates
    ``estimator.log_posterior`` interpolated at t. Works inside a sampler's no-grad or
    inference-mode context.
    """
    if hasattr(estimator, "grad_log_posterior"):
        return torch.as_tensor(estimator.grad_log_posterior(x, t)).to(x.device).double()
    return log_posterior_grad(estimator.log_posterior, x, t).double()


def read_t(estimator, x: torch.Tensor) -> torch.Tensor:
    """The estimator's calibrated reading t' of each row, float64, clipped to (0, 1]."""
    t_hat = estimator.predict(x)[0]
    t_hat = torch.as_tensor(np.asarray(t_hat) if not torch.is_tensor(t_hat) else t_hat)
    return t_hat.to(x.device, torch.float64).reshape(-1).clamp(_T_READ_MIN, 1.0)


class EstimatorGradientNAG(Guided):
    """``score(x|t) + w grad_x log p(t|x)`` with p(t|x) from a noise-level estimator.

    grad log p(t|x) = score(x|t) - score(x), so with the exact posterior this is exactly
    classifier-free NAG in score space; with a learned estimator it needs no null-t branch and
    no retraining.

    ``project=True`` (mode ``estimator-noise``) keeps only the gradient's component along the
    model's predicted noise eps_hat(x, t), so guidance changes how much noise the state
    carries and nothing else. A learned estimator's input gradient also has components in
    the data's directions (it reads image content to place t), and following those edits
    the content: on the default digits model that made FD worse at every scale.
    """

    def __init__(self, model, estimator, *, scale: float, interval=None,
                 project: bool = False):
        super().__init__(model)
        self.estimator, self.scale, self.project = estimator, float(scale), bool(project)
        self.interval = _interval(interval, DEFAULT_INTERVAL)

    @property
    def mode(self) -> str:
        return "estimator-noise" if self.project else "estimator"

    def describe(self) -> dict:
        inner = self.model.describe() if isinstance(self.model, Guided) else {}
        return {**inner, "nag": {"scale": self.scale, "mode": self.mode,
                                 "interval": list(self.interval)}}

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        out = self.model(x, t, y, drop_t, drop_y)
        t = _rows(t, x)
        rows = _in_interval(t, self.interval) & ~_mask(drop_t, x.shape[0], x.device)
        rows &= _regular(self.schedule, t)
        if not self.scale or not bool(rows.any()):
            return out
        i = rows.nonzero().squeeze(1)
        xi, ti, p = x[i], t[i], self.prediction
        s = self.convert(out[i], p, "score", xi, ti)
        g = grad_log_posterior(self.estimator, xi, ti).reshape(s.shape)
        if self.project:
            g = _project(g, self.convert(out[i], p, "eps", xi, ti))
        out = out.clone()
        out[i] = self.convert(s + self.scale * g, "score", p, xi, ti).to(out.dtype)
        return out


def _project(g: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each row of g projected on the same row of direction."""
    d = direction.flatten(1)
    coef = (g.flatten(1) * d).sum(1) / (d * d).sum(1).clamp_min(1e-30)
    return (coef[:, None] * d).reshape(g.shape)


__all__ = ["EstimatorGradientNAG", "grad_log_posterior", "interpolate_log_posterior", "read_t"]
