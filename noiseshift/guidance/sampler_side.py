"""Sampler-side corrections driven by the meter: relabelling and a Langevin corrector.

`Relabel` (NAG mode ``relabel``) hands the network the level the state reads at instead of
the scheduled one. It is Time-Tuner's idea (Xia et al., CVPR 2024, arXiv 2310.09469) with
noiseshift's calibrated estimator as the tuner. Time-Tuner learns one ratio per step
(t_input = t * ratio_i, shared by every sample) by training against data, and feeds the
network's eps, as predicted at the tuned label, into the DDIM step at the scheduled alpha.
Here nothing is trained: each sample's label is read off its own state at every step
(`estimator.calibrated_t`), and the prediction is re-expressed as x0 at the scheduled t,
as `peers.TimeShift` does, so any sampler steps from t as usual.

`LangevinCorrector` is the corrector of predictor-corrector samplers (Song et al., ICLR
2021, Algorithm 5): after each step, ``steps`` Langevin moves at t_next,
x <- x + e s(x, t_next) + sqrt(2 e) z with e = 2 (snr |z| / |s|)^2 per sample, on the rows
whose calibrated reading is off t_next by more than ``tolerance`` (all rows when None). It
reaches the sampler through its ``step_hook`` (`hooks.model_hooks`); the model it
evaluates is the whole guided model, and it counts its evaluations.
"""

from __future__ import annotations

import torch

from ..errors import NoiseshiftError
from .base import FULL_INTERVAL, Guided, _in_interval, _interval, _regular, _rows
from .estimator import calibrated_t


class Relabel(Guided):
    """Mode ``relabel``: the model sees t + w (t_hat - t), t_hat the state's calibrated
    reading, and its x0 is re-expressed at the scheduled t. w = 1 is the full relabelling;
    ``window`` bounds |label - t| (a reading far off is more likely the meter's error than
    the state's). The output is unchanged where the label equals t."""

    def __init__(self, model, estimator, *, scale: float = 1.0, interval=None,
                 cap: float | None = None, window: float = 0.2):
        super().__init__(model)
        if not 0.0 <= scale <= 2.0:
            raise NoiseshiftError(f"--nag-mode relabel takes a scale in [0, 2] (1: the read "
                                  f"level), got {scale}")
        self.estimator, self.scale, self.window = estimator, float(scale), float(window)
        self.interval = _interval(interval, FULL_INTERVAL)

    def describe(self) -> dict:
        inner = self.model.describe() if isinstance(self.model, Guided) else {}
        return {**inner, "nag": {"scale": self.scale, "mode": "relabel",
                                 "interval": list(self.interval), "window": self.window}}

    def labels(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The label each row is fed (float64)."""
        t64 = t.double()
        move = self.scale * (calibrated_t(self.estimator, x).to(t64) - t64)
        label = (t64 + move.clamp(-self.window, self.window)).clamp(1e-3, 1.0)
        return torch.where(_in_interval(t64, self.interval), label, t64)

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = _rows(t, x)
        label = self.labels(x, t) if self.scale else t.double()
        moved = (label != t.double()) & _regular(self.schedule, t) & \
            _regular(self.schedule, label)
        return self.at_level(x, t, label, moved, y, drop_t, drop_y)


def check_corrector(snr: float, steps: int = 1, tolerance: float | None = None) -> None:
    """One line for a corrector setting that cannot run."""
    if not snr > 0 or int(steps) < 1 or int(steps) != steps or \
            (tolerance is not None and tolerance < 0):
        raise NoiseshiftError(f"--corrector SNR[,STEPS[,TOL]] needs SNR > 0, a whole STEPS >= "
                              f"1 and TOL >= 0, got {snr},{steps},{tolerance}")


class LangevinCorrector(Guided):
    """A Langevin corrector after every sampler step, as a wrapper whose forward is the
    model's own: ``snr`` (Song et al. use 0.16 on CIFAR-10 VP), ``steps`` moves per sampler
    step, on rows read off schedule by more than ``tolerance`` (needs ``estimator``; None:
    every row). ``evaluations`` counts the model rows it ran and ``reads`` the estimator
    rows, so a budget per sample is (sampler calls + evaluations / n)."""

    def __init__(self, model, *, snr: float, steps: int = 1, estimator=None,
                 tolerance: float | None = None):
        super().__init__(model)
        check_corrector(snr, steps, tolerance)
        if tolerance is not None and estimator is None:
            raise NoiseshiftError("a corrector gated by the meter needs TOL >= 0 and an "
                                  "estimator")
        self.snr, self.steps, self.estimator = float(snr), int(steps), estimator
        self.tolerance = None if tolerance is None else float(tolerance)
        self.evaluations = self.reads = 0

    def describe(self) -> dict:
        inner = self.model.describe() if isinstance(self.model, Guided) else {}
        return {**inner, "corrector": {"snr": self.snr, "steps": self.steps,
                                       "tolerance": self.tolerance}}

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        return self.model(x, t, y, drop_t, drop_y)

    def sampler_hook(self, model, y, noise):
        """The step hook for one `sampling.sample` call: ``model`` is what the sampler
        calls (the whole guided, blocked model), ``y`` its labels, ``noise()`` a standard
        normal draw for every row (each sample's own second stream, apart from the
        sampler's)."""
        return lambda info: self.correct(model, info["x_next"], info["t_next"], y, noise)

    def off_schedule(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Rows to correct: all, or those whose calibrated reading is off t by > tolerance."""
        if self.tolerance is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.reads += x.shape[0]
        return (calibrated_t(self.estimator, x) - t).abs() > self.tolerance

    def correct(self, model, x, t: float, y, noise) -> torch.Tensor:
        if float(self.schedule.sigma(t)) <= 0:
            return x
        rows = self.off_schedule(x, t).to(x.device)
        for _ in range(self.steps):
            z = noise()  # for every row, corrected or not: a sample's draws never depend
            # on which of its batch-mates were off schedule
            i = rows.nonzero().squeeze(1)
            if not len(i):
                return x
            xi, ti = x[i], torch.full((len(i),), t, dtype=torch.float64, device=x.device)
            out = model(xi, ti, y=None if y is None else y[i])
            self.evaluations += len(i)
            s = self.convert(out, self.prediction, "score", xi, ti)
            zi = z[i].double()
            e = 2 * (self.snr * zi.flatten(1).norm(dim=1)
                     / s.flatten(1).norm(dim=1).clamp_min(1e-12)) ** 2
            e = e.reshape(-1, *[1] * (xi.ndim - 1))
            x = x.clone()
            x[i] = (xi.double() + e * s + (2 * e).sqrt() * zi).to(x.dtype)
        return x


__all__ = ["LangevinCorrector", "Relabel", "check_corrector"]
