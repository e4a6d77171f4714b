"""The dataset type every layer passes around, and the checks on data values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import NoiseshiftError


@dataclass
class Dataset:
    """Samples x (N, *shape) in float32 with optional labels, and how to rebuild them."""

    x: torch.Tensor
    labels: torch.Tensor | None
    spec: dict
    num_classes: int = 0
    # Orthonormal basis (D, k) of a subspace known to hold every data point, if any.
    subspace: torch.Tensor | None = None
    mixture: Any = None  # a data.mixture.GaussianMixture, for exact quantities
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.x.shape[0]

    def second_moment(self) -> float:
        """E|x0|^2 per dimension (exact for a mixture)."""
        if self.mixture is not None:
            return self.mixture.second_moment()
        return float(self.x.double().pow(2).mean())

    def split(self, held_out: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A seeded (train, held-out) split."""
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_held = max(1, int(round(held_out * len(self))))
        parts = []
        for idx in (perm[n_held:], perm[:n_held]):
            labels = None if self.labels is None else self.labels[idx]
            parts.append(
                Dataset(self.x[idx], labels, self.spec, self.num_classes, self.subspace,
                        self.mixture, self.info)
            )
        return parts[0], parts[1]



def check_finite(arr, path=None, what: str = "data") -> None:
    """Raise a one-line NoiseshiftError naming the first NaN or Inf (sample and position)."""
    a = np.asarray(arr)
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(a[where]) else "Inf"
        raise NoiseshiftError(f"{what} contain {int(bad.sum())} NaN/Inf values; the first "
                              f"({kind}) is at sample {where[0]}, index {list(where[1:])}", path)
