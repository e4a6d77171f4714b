"""Encode image data into VAE latents with a local diffusers `AutoencoderKL`, so a latent
model's noise-level estimator can be trained where its states live.

Latents are written in diffusion space, z = (mean - shift_factor) * scaling_factor (the
posterior mean: deterministic, the same latents on every run), to an HDF5 file with the
dataset `latents` (N, C, h, w), `labels` when the data have them, and the attributes
`scaling_factor`, `shift_factor` (0 when the VAE has none), `vae` and `data` (the spec);
`--data latents:FILE` reads it back (`data.load_latents`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from ..data import Dataset
from ..errors import NoiseshiftError
from ..io import atomic_path
from ..runtime import resolve_device
from . import require
from .diffusers import check_saved_class, quiet_load_kwargs
from .hub import hub_id, resolve


def load_vae(path, device="cpu", *, allow_download: bool = False):
    """An `AutoencoderKL` from a local folder (save_pretrained layout, or a pipeline folder
    with a `vae/` subfolder), or from a Hub id ``ORG/NAME[@REVISION]`` of either layout in the
    Hugging Face cache (`hub.resolve`; downloaded only with ``allow_download``). Its
    ``source`` attribute names what was loaded: the folder, or ``id@revision``."""
    diffusers = require("diffusers")
    hub = None if hub_id(path) is None else resolve(
        path, allow_download=allow_download, files=("config.json", "vae/config.json"))
    folder = Path(path) if hub is None else hub.folder
    if not folder.is_dir():
        raise NoiseshiftError("no such folder (a diffusers AutoencoderKL saved with "
                              "save_pretrained), nor a Hub id ORG/NAME", path)
    sub = "vae" if (folder / "vae" / "config.json").exists() else None
    check_saved_class(folder / (sub or "") / "config.json", "AutoencoderKL", path)
    name, kw = (folder, {}) if hub is None else (hub.id, hub.load_kwargs())
    try:
        with warnings.catch_warnings():
            # diffusers 0.42's load_config passes a keyword the hub client deprecated
            warnings.filterwarnings("ignore", "The `local_dir_use_symlinks` argument")
            vae = diffusers.AutoencoderKL.from_pretrained(name, subfolder=sub, **kw,
                                                          **quiet_load_kwargs())
    except Exception as e:  # diffusers raises many types for a wrong folder
        raise NoiseshiftError(f"cannot load an AutoencoderKL ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]})", path) from e
    vae.source = str(folder.resolve()) if hub is None else f"{hub.id}@{hub.revision}"
    return vae.to(resolve_device(device)).eval()


def _factors(vae, path) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", None)
    if scale is None:
        raise NoiseshiftError("the VAE's config has no scaling_factor", path)
    shift = getattr(vae.config, "shift_factor", None)
    return float(scale), float(shift or 0.0)


def encode_latents(vae_path, data: Dataset, out, *, batch_size: int = 64, device="auto",
                   progress: Callable[[int, int], None] | None = None,
                   allow_download: bool = False) -> dict:
    """Encode `data` (images in [-1, 1]) with the VAE at `vae_path` (a folder or a Hub id,
    `load_vae`) into `out` (HDF5, written through a temporary file and a rename). Returns a
    summary."""
    if len(data.shape) != 3:
        raise NoiseshiftError(f"encode needs image data (C, H, W), got {data.shape}")
    dev = resolve_device(device)
    vae = load_vae(vae_path, dev, allow_download=allow_download)
    scale, shift = _factors(vae, vae_path)
    want = int(vae.config.in_channels)
    x = data.x
    if x.shape[1] != want:
        if x.shape[1] != 1:
            raise NoiseshiftError(f"the VAE takes {want} channels, the data have {x.shape[1]}",
                                  vae_path)
        x = x.expand(-1, want, -1, -1)
    parts, done = [], 0
    with torch.no_grad():
        for xb in x.split(batch_size):
            z = vae.encode(xb.to(dev)).latent_dist.mean
            parts.append(((z - shift) * scale).float().cpu().numpy())
            done += len(xb)
            if progress is not None:
                progress(done, len(x))
    lat = np.concatenate(parts)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("latents", data=lat)
        if data.labels is not None:
            f.create_dataset("labels", data=data.labels.numpy())
        f.attrs.update({"scaling_factor": scale, "shift_factor": shift,
                        "vae": vae.source,
                        "data": json.dumps(data.spec, default=str)})
    return {"out": str(out), "n": int(lat.shape[0]), "shape": list(lat.shape[1:]),
            "scaling_factor": scale, "shift_factor": shift,
            "std": float(lat.std()), "mean": float(lat.mean())}


__all__ = ["encode_latents", "load_vae"]
