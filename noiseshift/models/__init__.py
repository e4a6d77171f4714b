"""Small denoisers that follow the denoiser protocol of docs/architecture.md, and their
checkpoints.

    model = build_model({"kind": "unet", "shape": [1, 16, 16], "schedule": "linear",
                         "num_classes": 10, "t_dropout": 0.3})
    out = model(x, t, y=None, drop_t=None, drop_y=None)   # in model.prediction
    save_model(model, "model.pt"); model = load_model("model.pt")

Checkpoints are plain dicts of tensors and strings, loaded with ``weights_only=True``; the
config travels as a JSON string.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, NoiseshiftError
from ..io.checkpoints import json_entry, read_checkpoint, save_checkpoint
from ..runtime import resolve_device
from ..schedules import get_schedule
from .base import PREDICTIONS, Denoiser, TimeEmbedding
from .nets import MLPDenoiser, UNetDenoiser

FORMAT = "noiseshift.model"
VERSION = 1

KINDS: dict[str, type[Denoiser]] = {"mlp": MLPDenoiser, "unet": UNetDenoiser}

_COMMON = {"prediction": "velocity", "num_classes": 0, "t_dropout": 0.0, "class_dropout": 0.0,
           "data_m2": 1.0}
DEFAULTS = {
    "mlp": {**_COMMON, "width": 256, "depth": 3, "emb_dim": 128},
    "unet": {**_COMMON, "channels": [16, 32], "emb_dim": 64},
}


def build_model(config: dict) -> Denoiser:
    """A fresh denoiser from a config dict; missing keys take the `DEFAULTS` of its kind.

    Required: ``kind`` ("mlp" or "unet"), ``shape`` ((d,) or (C, H, W)) and ``schedule``
    (a name, a dict or a Schedule). The filled-in config is ``model.config``.
    """
    kind = config.get("kind")
    if kind not in KINDS:
        raise NoiseshiftError(f"unknown model kind {kind!r}; use one of {sorted(KINDS)}")
    missing = [k for k in ("shape", "schedule") if k not in config]
    if missing:
        raise NoiseshiftError(f"model config lacks {missing}")
    cfg = {**DEFAULTS[kind], **config}
    cfg["schedule"] = get_schedule(cfg["schedule"]).to_dict()
    cfg["shape"] = [int(s) for s in cfg["shape"]]
    if cfg["prediction"] not in PREDICTIONS:
        raise NoiseshiftError(f"unknown prediction {cfg['prediction']!r}; use one of "
                              f"{list(PREDICTIONS)}")
    if kind == "unet" and len(cfg["shape"]) != 3:
        raise NoiseshiftError(f"the UNet needs (C, H, W) data, got shape {cfg['shape']}; "
                              "use the MLP for vectors")
    return KINDS[kind](json.loads(json.dumps(cfg)))


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model) -> dict:
    """A JSON summary of any denoiser (a network, the exact mixture, a wrapper)."""
    cfg = getattr(model, "config", {}) or {}
    out = {
        "kind": cfg.get("kind", type(model).__name__),
        "params": num_params(model) if isinstance(model, torch.nn.Module) else 0,
        "schedule": model.schedule.to_dict(),
        "prediction": model.prediction,
        "num_classes": int(getattr(model, "num_classes", 0)),
        "supports_null_t": bool(getattr(model, "supports_null_t", False)),
    }
    for key in ("shape", "t_dropout", "class_dropout", "data"):
        if key in cfg:
            out[key] = cfg[key]
    return out


def model_shape(model) -> tuple[int, ...]:
    """The shape of one sample, (d,) or (C, H, W), from a model's config (or its mixture)."""
    cfg = getattr(model, "config", {}) or {}
    if "shape" in cfg:
        return tuple(int(s) for s in cfg["shape"])
    mixture = getattr(model, "mixture", None)
    if mixture is not None:
        return (mixture.dim,)
    raise NoiseshiftError("cannot tell the sample shape of this model; pass shape=")


# -- checkpoints ----------------------------------------------------------------------------

def save_model(model: Denoiser, path, ema_state: dict | None = None,
               extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    ``extra`` (JSON-able; default ``model.info``) carries e.g. the training summary.
    ``ema_state``, when given, is stored beside the raw weights and preferred by `load_model`.
    """
    extra = getattr(model, "info", {}) if extra is None else extra
    fields = {
        "config": json.dumps(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": json.dumps(extra),
    }
    if ema_state is not None:
        fields["ema_state"] = {k: v.detach().cpu() for k, v in ema_state.items()}
    return save_checkpoint(path, FORMAT, fields, VERSION)


def load_model(path, device="cpu", ema: bool = True) -> Denoiser:
    """A denoiser from a checkpoint, in eval mode on ``device`` ("auto" picks CUDA when
    there is one). With ``ema`` the EMA weights are used when the file has them."""
    dev = resolve_device(device)
    ckpt = read_checkpoint(path, FORMAT, version=VERSION)
    try:
        config = json_entry(ckpt, "config")
        extra = json_entry(ckpt, "extra", "{}")
        model = build_model(config)
        state = ckpt.get("ema_state") if ema and "ema_state" in ckpt else ckpt["state_dict"]
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, NoiseshiftError) as e:
        raise CheckpointError(f"damaged checkpoint ({type(e).__name__}: {e})", path) from e
    model.info = extra
    return model.to(dev).eval()


__all__ = [
    "DEFAULTS", "Denoiser", "KINDS", "MLPDenoiser", "TimeEmbedding", "UNetDenoiser",
    "build_model", "describe", "load_model", "model_shape", "num_params", "save_model",
]
