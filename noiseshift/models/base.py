"""What every trained denoiser shares: preconditioning, t and class embeddings with learned
null tokens, and the denoiser protocol of docs/architecture.md.

A subclass only maps a preconditioned input and an embedding to a unit-scale output
(`_net(x_in, emb)`); the base class turns that into the model's parametrisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data import t_grid
from ..schedules import expand_like, get_schedule

PREDICTIONS = ("velocity", "eps", "x0", "score")


class TimeEmbedding(nn.Module):
    """Sinusoidal features of 1000 t (as in DiT / SiT) followed by a two-layer MLP."""

    def __init__(self, dim: int, freqs: int = 16, max_period: float = 10000.0):
        super().__init__()
        k = torch.arange(freqs, dtype=torch.float32) / freqs
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * k), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = 1000.0 * t.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class Denoiser(nn.Module):
    """Base of `MLPDenoiser` and `UNetDenoiser`.

    Preconditioning (EDM's c_in / c_skip / c_out, derived from the schedule for any
    parametrisation, so one network trains well under every schedule; see `coefficients`).
    Rows with drop_t must not learn t through the back door of the preconditioning, so there
    the input is scaled by its own RMS, there is no skip, and the output scale is one
    constant (the target's RMS over t ~ U[0, 1]).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.schedule = get_schedule(config["schedule"])
        self.prediction = config["prediction"]
        self.num_classes = int(config["num_classes"])
        self.shape = tuple(config["shape"])
        self.data_m2 = float(config["data_m2"])
        emb = int(config["emb_dim"])
        self.t_embed = TimeEmbedding(emb)
        self.null_t = nn.Parameter(0.02 * torch.randn(emb))
        # Index num_classes is the learned null-class token.
        self.class_embed = nn.Embedding(self.num_classes + 1, emb) if self.num_classes else None
        # Null-t rows: one t-free output scale, the target's RMS over t ~ U[0, 1] (midpoint
        # grid), so their loss is the plain MSE whose minimiser is E[target | x].
        a, b = self._target_coeffs(t_grid(256))
        self.null_scale = float((a**2 * self.data_m2 + b**2).mean().sqrt())

    @property
    def supports_null_t(self) -> bool:
        return float(self.config.get("t_dropout", 0.0)) > 0.0

    # -- preconditioning --------------------------------------------------------------------
    def _target_coeffs(self, t: torch.Tensor):
        """The training target is A(t) x0 + B(t) eps; A and B are read off
        `Schedule.from_x0_eps` rather than re-derived."""
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        a = self.schedule.from_x0_eps(one, zero, self.prediction, one, t)
        b = self.schedule.from_x0_eps(zero, one, self.prediction, one, t)
        return a, b

    def coefficients(self, t: torch.Tensor):
        """EDM-style (c_in, c_skip, c_out), (N,) float64 each, for data of per-dimension
        second moment m2: c_in normalises x_t, c_skip x_t is the best linear guess of the
        target and c_out the RMS of what is left, so the network always predicts a
        unit-scale residual (for x0 prediction this is exactly EDM's preconditioning)."""
        # Clamped away from 0, where the score's scale 1/sigma is infinite.
        t = t.double().clamp_min(1e-5)
        a, b = self._target_coeffs(t)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        var_x = self.schedule.second_moment(t, self.data_m2)
        cov = a * alpha * self.data_m2 + b * sigma
        total = a**2 * self.data_m2 + b**2
        c_out = (total - cov**2 / var_x).clamp_min(1e-6 * total).sqrt()
        return var_x.rsqrt(), cov / var_x, c_out

    def loss_scale(self, t: torch.Tensor, drop_t=None) -> torch.Tensor:
        """(N,) float64 scale each row's training error is divided by: c_out(t), or the
        constant null-t scale in null-t rows."""
        c_out = self.coefficients(t)[2]
        if drop_t is None:
            return c_out
        return torch.where(drop_t, torch.full_like(c_out, self.null_scale), c_out)

    def preconditioning(self, x: torch.Tensor, t: torch.Tensor, drop_t=None):
        """(c_in, c_skip, c_out) per row, shaped to broadcast against x."""
        c_in, c_skip, c_out = self.coefficients(t)
        if drop_t is not None and bool(drop_t.any()):
            # Null-t rows: the input scaled by its own RMS, no skip, a constant output
            # scale: nothing here depends on the t given.
            rms = x.detach().double().flatten(1).pow(2).mean(1).clamp_min(1e-12).sqrt()
            c_in = torch.where(drop_t, 1.0 / rms, c_in)
            c_skip = torch.where(drop_t, torch.zeros_like(c_skip), c_skip)
            c_out = torch.where(drop_t, torch.full_like(c_out, self.null_scale), c_out)
        return tuple(expand_like(c.to(x.dtype), x) for c in (c_in, c_skip, c_out))

    # -- conditioning -----------------------------------------------------------------------
    def embed(self, t: torch.Tensor, y=None, drop_t=None, drop_y=None) -> torch.Tensor:
        emb = self.t_embed(t)
        if drop_t is not None:
            emb = torch.where(drop_t[:, None], self.null_t.to(emb.dtype)[None], emb)
        if self.class_embed is not None:
            null = torch.full_like(t, self.num_classes, dtype=torch.long)
            y = null if y is None else torch.as_tensor(y, device=t.device).long().expand_as(null)
            if drop_y is not None:
                y = torch.where(drop_y, null, y)
            emb = emb + self.class_embed(y)
        return emb

    # -- the denoiser protocol ----------------------------------------------------------------
    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        drop_t = None if drop_t is None else torch.as_tensor(drop_t, device=x.device).bool()
        drop_y = None if drop_y is None else torch.as_tensor(drop_y, device=x.device).bool()
        c_in, c_skip, c_out = self.preconditioning(x, t, drop_t)
        return c_skip * x + c_out * self._net(c_in * x, self.embed(t, y, drop_t, drop_y))

    def _net(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
