"""A perfect model in diffusers' clothes: the Gaussian mixture's exact denoiser with
UNet2DModel's call signature.

``unet(sample, timestep).sample`` returns the exact eps (or v, or x0) of a
`noiseshift.data.GaussianMixture` for the scheduler's alphas, so any diffusers scheduler can
run with a perfect model and any noise shift measured comes from the scheduler alone::

    mix = make_gmm(dim=64)                       # 64-d, seen as (1, 8, 8) images
    unet = MixtureUNet.for_scheduler(mix.mixture, DDIMScheduler(), (1, 8, 8),
                                     data=mix.spec)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())

The timestep is read as the scheduler's UNet reads it: a DDPM index into ``alphas_cumprod``
(fractional indices, as Euler passes with Karras sigmas, between table entries linear in
log sigma), or ``sigma * num_train_timesteps`` for flow models. The input is the state the
network sees (VP form; Euler's ``scale_model_input`` already divided by sqrt(1 + sigma^2)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import GaussianMixture
from ..errors import NoiseshiftError
from ..schedules import get_schedule
from .levels import FLOW_FAMILY, V_TO_VELOCITY, VP_FAMILY, map_level, table_level

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


class _Config(dict):
    """A dict read by attribute too, as diffusers' FrozenDict is (``unet.config.in_channels``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass
class UNetOutput:
    """What UNet2DModel returns: ``.sample`` (and ``out[0]``)."""

    sample: torch.Tensor

    def __getitem__(self, i):
        return (self.sample,)[i]


class MixtureUNet(torch.nn.Module):
    """The exact denoiser of a Gaussian mixture, called as diffusers calls a UNet."""

    def __init__(self, mixture: GaussianMixture, sample_shape, *, alphas_cumprod=None,
                 prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 data: dict | None = None):
        super().__init__()
        shape = tuple(int(v) for v in sample_shape)
        if int(np.prod(shape)) != mixture.dim:
            raise NoiseshiftError(f"a {mixture.dim}-d mixture cannot fill samples of shape "
                                  f"{shape}")
        if prediction_type not in PREDICTION_TYPES:
            raise NoiseshiftError(f"unknown prediction_type {prediction_type!r}; use one of "
                                  f"{PREDICTION_TYPES}")
        flow = prediction_type == "flow"
        if not flow and alphas_cumprod is None:
            raise NoiseshiftError("a VP mixture UNet needs the scheduler's alphas_cumprod")
        self.mixture, self.shape, self.prediction_type = mixture, shape, prediction_type
        self.alphas_cumprod = None if flow else np.asarray(alphas_cumprod, dtype=np.float64)
        self.num_train_timesteps = int(num_train_timesteps)
        self.family = get_schedule(FLOW_FAMILY if flow else VP_FAMILY)
        self.data_spec = data
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.float32), persistent=False)
        size = shape[1] if len(shape) == 3 and shape[1] == shape[2] else list(shape[1:])
        self.config = _Config(in_channels=shape[0], out_channels=shape[0], sample_size=size,
                              prediction_type=prediction_type, num_class_embeds=None,
                              _class_name=type(self).__name__)

    @classmethod
    def for_scheduler(cls, mixture: GaussianMixture, scheduler, sample_shape, *,
                      data: dict | None = None) -> MixtureUNet:
        """The exact UNet for a diffusers scheduler: its alphas (or flow) and prediction type."""
        flow = "FlowMatch" in type(scheduler).__name__
        config = scheduler.config
        return cls(mixture, sample_shape,
                   alphas_cumprod=None if flow else scheduler.alphas_cumprod,
                   prediction_type="flow" if flow else config.get("prediction_type", "epsilon"),
                   num_train_timesteps=config.get("num_train_timesteps", 1000), data=data)

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def level(self, timestep: float) -> tuple[float, float]:
        """(a, s) of the input at a timestep, as the scheduler's network reads it."""
        if self.alphas_cumprod is None:
            sigma = float(timestep) / self.num_train_timesteps
            return 1.0 - sigma, sigma
        return table_level(self.alphas_cumprod, timestep)

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict=True,
                **kwargs):
        ts = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(sample.shape[0])
        out = torch.empty(sample.shape, dtype=torch.float64, device=sample.device)
        for value in torch.unique(ts):
            rows = (ts == value).nonzero().squeeze(1).to(sample.device)
            out[rows] = self._exact(sample[rows], float(value))
        out = out.to(sample.dtype)
        return UNetOutput(out) if return_dict else (out,)

    def _exact(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        a, s = self.level(timestep)
        t, k = map_level(a, s, self.family)
        xf = x.double() * k
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        x0 = self.mixture.x0_pred(xf.reshape(x.shape[0], -1), tt, self.family).reshape(x.shape)
        x0, eps = self.family.to_x0_eps(x0.double(), "x0", xf, tt)
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        v = self.family.from_x0_eps(x0, eps, "velocity", xf, tt)
        return v if self.prediction_type == "flow" else v / V_TO_VELOCITY


__all__ = ["MixtureUNet", "PREDICTION_TYPES", "UNetOutput"]
