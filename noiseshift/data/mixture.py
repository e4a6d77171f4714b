"""The Gaussian mixture: exact score, x0 prediction and posterior p(t | x) under any schedule.

It is the ground truth for the rest of the toolkit: estimators and guidance are tested
against it rather than against another network.
"""

from __future__ import annotations

import math

import torch

from ..schedules import Schedule, expand_like, get_schedule
from .base import Dataset

DEFAULT_T_GRID = 256
DATA_END = get_schedule("linear")  # at t = 0: alpha = 1, sigma = 0, x_t is the data


def t_grid(n: int = DEFAULT_T_GRID) -> torch.Tensor:
    """Midpoints of n equal bins of [0, 1] (float64): the grid posteriors over t live on."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


# -- Gaussian mixture -----------------------------------------------------------------------

class GaussianMixture:
    """Isotropic Gaussian mixture sum_k w_k N(mu_k, c_k^2 I) with exact diffusion quantities.

    Under any schedule x_t | k ~ N(alpha mu_k, (alpha^2 c_k^2 + sigma^2) I), so the score,
    E[x0 | x_t], and p(x_t | t) are closed-form. All math runs in float64.
    """

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        self.weights = w / w.sum()

    @classmethod
    def random(cls, dim: int = 64, components: int = 8, std: float = 0.25, seed: int = 0):
        """Means with per-dimension scale ~0.8 and small isotropic spread: image-like second
        moment (about 0.7 per dimension) with well separated modes."""
        g = torch.Generator().manual_seed(seed)
        means = 0.8 * torch.randn(components, dim, generator=g, dtype=torch.float64)
        return cls(means, std)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        return {"means": self.means.tolist(), "stds": self.stds.tolist(),
                "weights": self.weights.tolist()}

    def second_moment(self) -> float:
        """E|x0|^2 per dimension."""
        m2 = (self.means**2).sum(1) / self.dim + self.stds**2
        return float((self.weights * m2).sum())

    def sample(self, n: int, generator: torch.Generator | None = None):
        """(x0 float32 (n, d), component labels (n,))."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * z
        return x.float(), k

    def _log_joint(self, xx, xm, a, s):
        """log w_k + log N(x; a mu_k, (a^2 c_k^2 + s^2) I) and its variance v, from |x|^2,
        x . mu_k and a, s, each already shaped to broadcast: the one place the mixture's
        density is written."""
        v = a**2 * self.stds**2 + s**2
        dist2 = xx - 2 * a * xm + a**2 * (self.means**2).sum(-1)
        logn = -0.5 * (dist2 / v + self.dim * torch.log(2 * math.pi * v))
        return torch.log(self.weights) + logn, v

    def _resp(self, x: torch.Tensor, t, schedule: Schedule):
        x = x.reshape(x.shape[0], -1).double()
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]  # (N, 1)
        logj, v = self._log_joint((x**2).sum(-1, keepdim=True), x @ self.means.T, a, s)
        return x, a, v, logj  # v, logj: (N, K)

    def log_joint(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """log w_k + log p_t(x | k), (N, K): the log-density of each component at t."""
        return self._resp(x, t, schedule)[3]

    def log_prob(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """log p_t(x), (N,)."""
        return torch.logsumexp(self.log_joint(x, t, schedule), dim=-1)

    def log_prob_data(self, x) -> torch.Tensor:
        """log p(x) of the data distribution itself, (N,), for samples x (N, ...) as an array
        or tensor: the linear schedule at t = 0 (alpha = 1, sigma = 0; under VE, t = 0 still
        carries sigma_min of noise)."""
        x = torch.as_tensor(x)
        return self.log_prob(x.reshape(len(x), -1).double(), 0.0, DATA_END)

    def score(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """grad_x log p_t(x), same shape and dtype as x."""
        xf, a, v, logj = self._resp(x, t, schedule)
        r = torch.softmax(logj, -1)  # (N, K)
        out = -(xf * (r / v).sum(-1, keepdim=True) - a * (r / v) @ self.means)
        return out.reshape(x.shape).to(x.dtype)

    def x0_pred(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        """E[x0 | x_t = x], same shape and dtype as x."""
        xf, a, v, logj = self._resp(x, t, schedule)
        r = torch.softmax(logj, -1)
        g = a * self.stds**2 / v  # (N, K): per-component shrinkage gain
        # sum_k r_k [mu_k + g_k (x - a mu_k)]
        out = r @ self.means + (r * g).sum(-1, keepdim=True) * xf - (r * g * a) @ self.means
        return out.reshape(x.shape).to(x.dtype)

    def predict(self, x: torch.Tensor, t, schedule: Schedule, prediction: str = "velocity"):
        """The exact model output in any parametrisation."""
        x0 = self.x0_pred(x, t, schedule).double()
        xd = x.double()
        x0, eps = schedule.to_x0_eps(x0, "x0", xd, t)
        return schedule.from_x0_eps(x0, eps, prediction, xd, t).to(x.dtype)

    def log_likelihood_t(self, x: torch.Tensor, schedule: Schedule, grid: torch.Tensor):
        """log p(x | t) for each state and each t on the grid, (N, G)."""
        xf = x.reshape(x.shape[0], -1).double()
        a, s = schedule.alpha(grid), schedule.sigma(grid)  # (G,)
        xx = (xf**2).sum(-1)[:, None, None]  # (N, 1, 1)
        xm = (xf @ self.means.T)[:, None, :]  # (N, 1, K)
        logj, _ = self._log_joint(xx, xm, a[None, :, None], s[None, :, None])  # (N, G, K)
        return torch.logsumexp(logj, dim=-1)

    def posterior_t(self, x: torch.Tensor, schedule: Schedule, grid: torch.Tensor | None = None):
        """Exact p(t | x) on a grid under a uniform prior on t: (grid (G,), probs (N, G))."""
        grid = t_grid() if grid is None else grid.double()
        return grid, torch.softmax(self.log_likelihood_t(x, schedule, grid), dim=-1)

    def unconditional_predict(self, x: torch.Tensor, schedule: Schedule,
                              prediction: str = "velocity", grid: torch.Tensor | None = None):
        """E[target | x] with t integrated out: what a network trained with t-dropout learns
        for its null-t token, sum_g p(t_g | x) * predict(x, t_g)."""
        grid, post = self.posterior_t(x, schedule, grid)
        out = torch.zeros_like(x, dtype=torch.float64)
        for g, tg in enumerate(grid):
            out += expand_like(post[:, g], out) * self.predict(x.double(), tg, schedule,
                                                                prediction)
        return out.to(x.dtype)

    def unconditional_score(self, x: torch.Tensor, schedule: Schedule,
                            grid: torch.Tensor | None = None):
        """grad_x log p(x) for p(x) = int p(x | t) dt on the grid: sum_g p(t_g | x) s_g(x)."""
        return self.unconditional_predict(x, schedule, "score", grid)


class MixtureDenoiser(torch.nn.Module):
    """The exact mixture denoiser, usable wherever a trained network is.

    Called as ``model(x, t, y=None, drop_t=None)``; rows with drop_t True get the exact
    t-unconditional prediction (what a null-t token learns).
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule,
                 prediction: str = "velocity"):
        super().__init__()
        self.mixture, self.schedule, self.prediction = mixture, get_schedule(schedule), prediction
        self.num_classes = 0
        self.config = {"kind": "mixture", "schedule": self.schedule.to_dict(),
                       "prediction": prediction}

    @property
    def supports_null_t(self) -> bool:
        return True

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        out = self.mixture.predict(x, t, self.schedule, self.prediction)
        if drop_t is not None and bool(drop_t.any()):
            idx = drop_t.nonzero().squeeze(1)
            out[idx] = self.mixture.unconditional_predict(x[idx], self.schedule, self.prediction)
        return out


def make_gmm(dim: int = 64, components: int = 8, std: float = 0.25, seed: int = 0,
             n: int = 4096) -> Dataset:
    mix = GaussianMixture.random(dim, components, std, seed)
    x, k = mix.sample(n, torch.Generator().manual_seed(seed + 1))
    return Dataset(
        x=x, labels=k, num_classes=components, mixture=mix,
        spec={"name": "gmm", "dim": dim, "components": components, "std": std, "seed": seed,
              "n": n},
    )


