"""Oracle estimators that need no trained network.

- `ExactOracle`: the exact posterior p(t | x) of Gaussian-mixture data under a uniform prior
  on t; its posterior mean is the best possible read-out, the yardstick for the learned one.
- `SubspaceOracle`: for data known to lie in a k-dimensional subspace (the built-in upsampled
  digits), a state's energy outside it is pure noise, |P_perp x|^2 ~ sigma^2 chi^2_{D-k}. It is
  the independent meter for judging corrections that were guided by the learned estimator.
"""

from __future__ import annotations

import math

import torch

from ..data import Dataset, GaussianMixture, t_grid
from ..errors import NoiseshiftError
from .base import NoiseLevelEstimator, posterior_moments

# A uniform prior on [0, 1] has this std: the most a t std can honestly be.
MAX_STD = 1.0 / math.sqrt(12.0)


class ExactOracle(NoiseLevelEstimator):
    """Posterior mean and std of the exact p(t | x) for Gaussian-mixture data."""

    name = "oracle"
    has_posterior = True
    grid_points = 256
    chunk = 256  # log p(x | t) holds an (N, G, K) tensor

    def _fit(self, train: Dataset, progress) -> None:
        if train.mixture is None:
            raise NoiseshiftError(f"the exact oracle needs Gaussian-mixture data (--data gmm), "
                                  f"not {train.name!r}")
        self.mixture_ = train.mixture

    def _grid(self, device):
        return t_grid(self.grid_points).to(device)

    def _on(self, device) -> GaussianMixture:
        m = self.mixture_
        if m.means.device != device:
            self.mixture_ = m = GaussianMixture(m.means.to(device), m.stds.to(device),
                                                m.weights.to(device))
        return m

    def _log_posterior(self, x):
        grid = self._grid(x.device)
        mix = self._on(x.device)
        ll = torch.cat([mix.log_likelihood_t(xb, self.schedule_, grid)
                        for xb in x.split(self.chunk)])
        return grid, torch.log_softmax(ll, dim=-1)

    def _raw(self, x):
        grid, logp = self._log_posterior(x)
        return posterior_moments(grid, logp)

    def _state(self):
        m = self.mixture_
        return {**super()._state(), "mixture.means": m.means, "mixture.stds": m.stds,
                "mixture.weights": m.weights}

    def _load_state(self, state):
        super()._load_state(state)
        self.mixture_ = GaussianMixture(state["mixture.means"], state["mixture.stds"],
                                        state["mixture.weights"])


class SubspaceOracle(NoiseLevelEstimator):
    """sigma_hat^2 = |P_perp x|^2 / (D - k) outside the data's k-dim subspace, t' = t(sigma_hat).

    Data have no component outside the subspace, so the out-of-subspace energy of alpha x0 +
    sigma eps is sigma^2 chi^2_{D-k} under every schedule: sigma_hat is unbiased in sigma^2 and
    its relative std is sqrt(2 / (D - k)).
    """

    name = "subspace"
    has_posterior = True
    grid_points = 256

    def _fit(self, train: Dataset, progress) -> None:
        q = train.subspace
        if q is None:
            raise NoiseshiftError(f"the subspace oracle needs data known to lie in a subspace "
                                  f"(the built-in digits), not {train.name!r}")
        if q.shape[1] >= q.shape[0]:
            raise NoiseshiftError(f"the data subspace fills all {q.shape[0]} dimensions, so no "
                                  f"energy is pure noise (use digits with --side > 8)")
        self.basis_ = q.double()

    def _energy(self, x: torch.Tensor):
        """(out-of-subspace energy (N,), its degrees of freedom)."""
        q = self.basis_.to(x.device)
        xf = x.reshape(len(x), -1).double()
        perp = xf - (xf @ q) @ q.T
        return (perp**2).sum(1), q.shape[0] - q.shape[1]

    def _raw(self, x):
        energy, dof = self._energy(x)
        sigma = (energy / dof).sqrt()
        t = self.schedule_.t_from_sigma(sigma)
        # Delta method: std(sigma_hat) = sigma / sqrt(2 dof), through dt/dsigma.
        slope = self.schedule_.d_sigma(t).abs().clamp_min(1e-12)
        return t, (sigma / math.sqrt(2 * dof) / slope).clamp_max(MAX_STD)

    def _log_posterior(self, x):
        """Exact p(t | energy) from the scaled chi-square likelihood, on a grid."""
        energy, dof = self._energy(x)
        grid = t_grid(self.grid_points).to(energy.device)
        s2 = self.schedule_.sigma(grid) ** 2
        ll = -0.5 * dof * torch.log(s2) - energy[:, None] / (2 * s2)
        return grid, torch.log_softmax(ll, dim=-1)

    def _state(self):
        return {**super()._state(), "basis": self.basis_}

    def _load_state(self, state):
        super()._load_state(state)
        self.basis_ = state["basis"]
