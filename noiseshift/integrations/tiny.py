"""A tiny diffusers DDPM pipeline trained on noiseshift data, for examples, tests and benches.

`tiny_unet(shape)` builds a small UNet2DModel from config (no download); `train_ddpm(data)`
trains one with diffusers' own DDPMScheduler.add_noise and the eps loss, through
noiseshift's training loop, and returns a DDPMPipeline. A few hundred steps on the built-in
16x16 digits take seconds to a minute on a CPU.
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn.functional as F

from ..data import Dataset
from ..defaults import cache_dir, recipe_key
from ..training import train_loop
from . import require


def tiny_unet(shape, channels=(16, 32), seed: int = 0):
    """A small UNet2DModel for (C, H, W) samples (H divisible by 2 ** (len(channels) - 1))."""
    diffusers = require("diffusers")
    torch.manual_seed(seed)
    c, h, _w = shape
    return diffusers.UNet2DModel(
        sample_size=h, in_channels=c, out_channels=c, layers_per_block=1,
        block_out_channels=tuple(channels), norm_num_groups=8,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels))


def train_ddpm(data: Dataset, *, steps: int = 300, batch_size: int = 64, lr: float = 2e-3,
               channels=(16, 32), seed: int = 0, scheduler=None, on_step=None):
    """A DDPMPipeline whose UNet learned ``data`` (eps prediction) for ``steps`` steps."""
    diffusers = require("diffusers")
    sched = scheduler if scheduler is not None else diffusers.DDPMScheduler(
        num_train_timesteps=1000, clip_sample=False)
    unet = tiny_unet(data.shape, channels, seed)
    x_all = data.x
    num_t = sched.config.num_train_timesteps

    def sample_batch(gen):
        idx = torch.randint(len(x_all), (batch_size,), generator=gen)
        t = torch.randint(num_t, (batch_size,), generator=gen)
        return x_all[idx], torch.randn(x_all[idx].shape, generator=gen), t

    def loss_fn(net, batch):
        x0, eps, t = batch
        return F.mse_loss(net(sched.add_noise(x0, eps, t), t).sample, eps)

    hist = train_loop(unet, loss_fn, sample_batch, steps=steps, lr=lr, ema_decay=None,
                      seed=seed, device="cpu", on_step=on_step)
    pipe = diffusers.DDPMPipeline(unet=unet.eval(), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe.training_losses = hist.losses
    return pipe


def cached_ddpm_folder(data: Dataset, progress=None, **recipe):
    """The folder of `train_ddpm`'s pipeline (``save_pretrained``), trained once and cached
    under noiseshift's cache folder, keyed by the data spec and the recipe. ``progress``
    gets the training loop's per-step info."""
    folder = cache_dir() / "diffusers" / f"ddpm-{recipe_key(data.spec, recipe)}"
    if not (folder / "model_index.json").is_file():
        pipe = train_ddpm(data, on_step=progress, **recipe)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        pipe.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)  # whole, or not at all
        except OSError:  # another process cached it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cached_ddpm(data: Dataset, **recipe):
    """`train_ddpm`, trained once and cached (`cached_ddpm_folder`); later calls load it
    from local files."""
    diffusers = require("diffusers")
    folder = cached_ddpm_folder(data, **recipe)
    pipe = diffusers.DDPMPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["cached_ddpm", "cached_ddpm_folder", "tiny_unet", "train_ddpm"]
