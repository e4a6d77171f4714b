"""The digits classifier whose features FD and precision/recall read, and its accuracy metric.

A small conv net the package trains itself (seeded, seconds on a CPU) on the training split
of the built-in digits, cached under `defaults.cache_dir()` by a hash of its recipe: no
Inception, no download. Images of any side are resized to the classifier's side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_digits
from ..defaults import cache_dir, recipe_key
from ..errors import NoiseshiftError
from ..io.checkpoints import read_checkpoint, save_checkpoint
from ..runtime import seeded_init
from ..tiny import sized
from .statistics import Estimate, bootstrap_mean

__all__ = [
    "CLASSIFIER",
    "DigitsClassifier",
    "apply_batched",
    "classifier_accuracy",
    "digits_classifier",
    "train_digits_classifier",
]

CLASSIFIER = sized("classifier", {"side": 16, "channels": [16, 32], "features": 64,
                                  "steps": 400, "batch_size": 64, "lr": 2e-3,
                                  "weight_decay": 1e-4, "seed": 0})
CLASSIFIER_FORMAT = "noiseshift.classifier"


class DigitsClassifier(nn.Module):
    """Two conv blocks and a `features`-d penultimate layer (sizes: `CLASSIFIER`).
    `features(x)` is what FD and precision/recall read; images of any side are resized to
    `side` first."""

    def __init__(self, side: int, channels, features: int, classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.side = side
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, features),
        )
        # Features are read before this ReLU: after it, dead units leave the covariance
        # singular and hide whatever moves them below zero.
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(features, classes))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] != 1:
            raise NoiseshiftError(f"the digits classifier reads (N, 1, H, W) images, got "
                                  f"{tuple(x.shape)}")
        if x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.side)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.resize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel (padding with the background value -1)."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_digits_classifier(config: dict | None = None, progress=None) -> DigitsClassifier:
    """Train the classifier on the training split of the digits (seeded; the held-out split
    of `Dataset.split(0.2, seed=0)` is never seen)."""
    cfg = {**CLASSIFIER, **(config or {})}
    train, _ = load_digits(cfg["side"]).split(0.2, seed=0)
    gen = torch.Generator().manual_seed(cfg["seed"])
    net = seeded_init(cfg["seed"], DigitsClassifier, cfg["side"], cfg["channels"],
                      cfg["features"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    net.train()
    for step in range(cfg["steps"]):
        idx = torch.randint(len(train), (cfg["batch_size"],), generator=gen)
        loss = F.cross_entropy(net(_shifted(train.x[idx], gen)), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, cfg["steps"], "training the digits classifier")
    net.info = {"config": cfg}
    return net.eval()


def digits_classifier(config: dict | None = None, progress=None) -> DigitsClassifier:
    """The feature network: loaded from `defaults.cache_dir()`, or trained (seconds) and
    cached there on first use."""
    cfg = {**CLASSIFIER, **(config or {})}
    path = Path(cache_dir()) / f"digits-classifier-{recipe_key(cfg)}.pt"
    if path.exists():
        try:
            ckpt = read_checkpoint(path, CLASSIFIER_FORMAT)
            net = DigitsClassifier(cfg["side"], cfg["channels"], cfg["features"])
            net.load_state_dict(ckpt["state_dict"])
            net.info = {"config": cfg}
            return net.eval()
        except (NoiseshiftError, RuntimeError, KeyError):
            pass  # damaged or stale: train afresh
    net = train_digits_classifier(cfg, progress)
    save_checkpoint(path, CLASSIFIER_FORMAT, {"config": json.dumps(cfg, sort_keys=True),
                                              "state_dict": net.state_dict()})
    return net


@torch.no_grad()
def apply_batched(fn, x, batch_size: int = 1024) -> np.ndarray:
    """fn over x (an array or a tensor) in CPU float32 batches, as one float64 array."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return torch.cat([fn(xb.float().cpu()) for xb in x.split(batch_size)]).double().numpy()


def classifier_accuracy(x, labels, classifier: DigitsClassifier | None = None,
                        **kw) -> Estimate:
    """Share of samples the classifier assigns to their requested class, with a CI."""
    return bootstrap_mean(classifier_hits(x, labels, classifier or digits_classifier()), **kw)


def classifier_hits(x, labels, net: DigitsClassifier) -> np.ndarray:
    """1.0 where the classifier assigns a sample to its requested class, else 0.0."""
    pred = apply_batched(lambda b: net(b).argmax(1).double(), x)
    return (pred == np.asarray(labels).reshape(-1)).astype(np.float64)
