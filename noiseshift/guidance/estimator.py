"""NAG from a noise-level estimator: ``score(x|t) + w grad_x log p(t|x)``, and what guidance
reads off an estimator (its posterior's gradient, its reading t')."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import NoiseshiftError
from ..estimators.base import (
    interp,
    interpolate_log_posterior,
    log_posterior_grad,
    posterior_moments,
)
from ..schedules import expand_like
from .base import (
    DEFAULT_CAP,
    FULL_INTERVAL,
    UNCAPPED_INTERVAL,
    Guided,
    _cap,
    _in_interval,
    _interval,
    _mask,
    _regular,
    _rows,
    capped,
)

# Estimator readings are clipped away from t = 0, where sigma -> 0 makes a score infinite.
_T_READ_MIN = 1e-3
# The reference curve is inverted on this many points of [0, 1].
_REF_POINTS = 1001
# The calibration's slope is a secant over +-(posterior std), at least this wide in raw t:
# the isotonic map is a staircase, whose point slopes are 0 or huge.
_MIN_SECANT = 0.01


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


def calibrated_t(estimator, x: torch.Tensor) -> torch.Tensor:
    """The level t-hat whose true states read, on average, like x does: the reading t' taken
    back through the inverse of the estimator's reference curve (the mean reading of true
    x_t at each t). Mid-range the two agree; near the ends a reading is biased toward the
    middle (true x_0 reads about 0.01, true x_1 about 0.97 by the default digits estimator),
    and t-hat removes that bias. float64, clipped to (0, 1]."""
    grid = torch.linspace(0.0, 1.0, _REF_POINTS, dtype=torch.float64)
    ref = torch.as_tensor(estimator.reference(grid), dtype=torch.float64).cpu()
    ref = torch.cummax(ref, 0).values + 1e-9 * grid  # strictly increasing, so invertible
    t_hat = interp(read_t(estimator, x).cpu(), ref, grid)
    return t_hat.to(x.device).clamp(_T_READ_MIN, 1.0)


def reading_and_grad(estimator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator's calibrated posterior-mean reading r(x) (N,) and grad_x r (like x), in
    float64. r = calibrate(E[t | x]); its gradient is the posterior mean's, times the
    calibration's secant slope over +-(posterior std)."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        grid, logp = estimator.log_posterior(xg)
        mean, std = posterior_moments(torch.as_tensor(grid).to(logp), logp)
        (grad,) = torch.autograd.grad(mean.sum(), xg)
    mean, half = mean.detach(), std.detach().clamp_min(_MIN_SECANT)
    slope = (estimator.calibrate(mean + half) - estimator.calibrate(mean - half)) / (2 * half)
    r = estimator.calibrate(mean)
    scale = slope.to(grad.device, torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
    return r.to(x.device, torch.float64), scale * grad.double()


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

    ``cap``: the velocity changes by at most cap times the score change (the score ->
    velocity factor t / (1 - t) of the linear schedule is capped at ``cap``); None: no cap.
    """

    def __init__(self, model, estimator, *, scale: float, interval=None,
                 project: bool = False, cap: float | None = None):
        super().__init__(model)
        self.estimator, self.scale, self.project = estimator, float(scale), bool(project)
        self.interval = _interval(interval, UNCAPPED_INTERVAL)
        self.cap = _cap(cap)

    @property
    def mode(self) -> str:
        return "estimator-noise" if self.project else "estimator"

    def describe(self) -> dict:
        inner = self.model.describe() if isinstance(self.model, Guided) else {}
        nag = {"scale": self.scale, "mode": self.mode, "interval": list(self.interval)}
        if self.cap is not None:
            nag["cap"] = self.cap
        return {**inner, "nag": nag}

    def gradient(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score-space correction at scale 1 for rows (out, x, t), float64, like x."""
        g = grad_log_posterior(self.estimator, x, t).reshape(x.shape)
        if self.project:
            g = _project(g, self.convert(out, self.prediction, "eps", x, t))
        return g

    def add(self, s: torch.Tensor, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided score: s + w g, w capped (see ``cap``)."""
        if self.cap is None:
            return s + self.scale * g
        return s + expand_like(self.scale * capped(self.schedule, t, self.cap), s) * g

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
        s = self.add(s, self.gradient(out[i], xi, ti), ti)
        out = out.clone()
        out[i] = self.convert(s, "score", p, xi, ti).to(out.dtype)
        return out


class ReadingLikelihoodNAG(EstimatorGradientNAG):
    """``score(x|t) + w grad_x log N(r(x); r_ref(t), (width t)^2)`` (mode
    ``estimator-reading``): the gradient of a Gaussian likelihood of the estimator's
    calibrated posterior-mean reading r(x) (`reading_and_grad`), centred on the reference
    r_ref(t), the mean reading of true x_t. It pulls the reading itself back to where true
    states read, along the direction that changes the reading, instead of raising the binned
    log p(t|x) at the scheduled t (mode ``estimator``). By default over the whole range with
    the score -> velocity factor capped at `DEFAULT_CAP`."""

    def __init__(self, model, estimator, *, scale: float, interval=None,
                 cap: float | None = DEFAULT_CAP, width: float = 0.05):
        interval = FULL_INTERVAL if interval is None else interval
        super().__init__(model, estimator, scale=scale, interval=interval, cap=cap)
        self.width = float(width)

    @property
    def mode(self) -> str:
        return "estimator-reading"

    def gradient(self, out, x, t):
        r, grad = reading_and_grad(self.estimator, x)
        ref = torch.as_tensor(self.estimator.reference(t.double())).to(r)
        coef = -(r - ref) / (self.width * t.double()) ** 2
        return expand_like(coef, grad) * grad


class ReadingStepNAG(EstimatorGradientNAG):
    """Mode ``estimator-step``: a damped Newton step on the estimator's reading, taken along
    the model's predicted noise.

    The model's predicted noise eps_hat(x, t) gives the direction e = eps_hat / |eps_hat|;
    the estimator's calibrated reading r(x) and its gradient give how far to move along it:
    c = -(r(x) - r_ref(t)) / (grad r . e) is the move that brings the reading back to the
    reference r_ref(t), the mean reading of true x_t (to first order). The guided denoised
    estimate is x0_hat + f c e with f = w / (1 + w): the scale w is the odds of the share
    of the read excess removed, so w = 1 removes half of it, w = 1.5 three fifths, and no
    scale overshoots the reference. The state follows through the sampler's own step. The
    learned estimator's gradient sets only the size of the move, never its direction (its
    other components edit image content). Rows where grad r . e < 0.1 |grad r| get no move;
    |c| is at most sigma(t) |eps_hat| (all of the predicted noise). No cap is needed: the
    velocity changes by -f c e / t, finite at t = 1.
    """

    def __init__(self, model, estimator, *, scale: float, interval=None,
                 cap: float | None = None):
        if scale < 0:
            raise NoiseshiftError(f"--nag-mode estimator-step takes a scale >= 0, got {scale}")
        interval = FULL_INTERVAL if interval is None else interval
        super().__init__(model, estimator, scale=scale, interval=interval, cap=cap)

    @property
    def mode(self) -> str:
        return "estimator-step"

    def add(self, s, g, t):
        return s + (self.scale / (1.0 + self.scale)) * g

    def gradient(self, out, x, t):
        """The score change that moves the denoised estimate by the full step c e."""
        p, xd = self.prediction, x.double()
        r, grad = reading_and_grad(self.estimator, x)
        eps = self.convert(out, p, "eps", x, t)
        norm = eps.flatten(1).norm(dim=1).clamp_min(1e-12)
        e = eps / expand_like(norm, eps)
        slope = (grad.flatten(1) * e.flatten(1)).sum(1)
        ok = slope > 0.1 * grad.flatten(1).norm(dim=1)
        ref = torch.as_tensor(self.estimator.reference(t.double())).to(r)
        bound = torch.as_tensor(self.schedule.sigma(t.double())).to(r) * norm
        c = torch.where(ok, -(r - ref) / slope.clamp_min(1e-12), torch.zeros_like(r))
        c = torch.maximum(torch.minimum(c, bound), -bound)
        x0 = self.convert(out, p, "x0", x, t)
        moved = self.convert(x0 + expand_like(c, e) * e, "x0", "score", xd, t)
        return moved - self.convert(x0, "x0", "score", xd, t)


def _project(g: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Each row of g projected on the same row of direction."""
    d = direction.flatten(1)
    coef = (g.flatten(1) * d).sum(1) / (d * d).sum(1).clamp_min(1e-30)
    return (coef[:, None] * d).reshape(g.shape)


__all__ = ["EstimatorGradientNAG", "ReadingLikelihoodNAG", "ReadingStepNAG", "calibrated_t",
           "grad_log_posterior", "interpolate_log_posterior", "read_t", "reading_and_grad"]
