"""The built-in data: upsampled sklearn digits and patches of sklearn's two sample photos."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NoiseshiftError
from .base import Dataset

#: Fraction of each photograph's width (its right-hand side) held out for the test split.
PHOTO_HELD_OUT = 0.2

def upsample(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear upsampling of (N, 1, h, w) images to side x side; a fixed linear map."""
    if images.shape[-1] == side:
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def load_digits(side: int = 16) -> Dataset:
    """sklearn's 1797 8x8 digits, scaled to [-1, 1] and upsampled to side x side.

    Upsampling is linear, so the data lie in a 64-dimensional subspace of the side^2 pixels;
    its basis rides along for the subspace oracle.
    """
    from sklearn.datasets import load_digits as sk_digits

    if not 8 <= side <= 256:  # 1797 images at side 256 are 470 MB already
        raise NoiseshiftError(f"digits side must be in 8..256, got {side}")
    d = sk_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    x = upsample(images, side)
    basis = upsample(torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8), side)
    q, _ = torch.linalg.qr(basis.reshape(64, side * side).T)
    return Dataset(
        x=x.contiguous(),
        labels=torch.tensor(d.target, dtype=torch.int64),
        spec={"name": "digits", "side": side},
        num_classes=10,
        subspace=q,
    )



# -- photos ---------------------------------------------------------------------------------

def _patches(img: np.ndarray, size: int, stride: int, x_lo: int, x_hi: int) -> np.ndarray:
    """All size x size patches (n, H, W, C) at the given stride lying wholly in columns
    [x_lo, x_hi)."""
    h = img.shape[0]
    out = [img[y:y + size, x:x + size]
           for y in range(0, h - size + 1, stride)
           for x in range(x_lo, x_hi - size + 1, stride)]
    return np.stack(out) if out else np.zeros((0, size, size, img.shape[2]), img.dtype)


def load_photos(size: int = 32, split: str = "train", stride: int | None = None) -> Dataset:
    """RGB size x size patches of the two photographs shipped with scikit-learn
    (`load_sample_images`: china.jpg and flower.jpg, 427 x 640), scaled to [-1, 1].

    The split is by region, so no held-out pixel is ever seen in training: `train` takes
    patches from the left (1 - PHOTO_HELD_OUT) of each photograph's width, `test` from the
    rest, `all` from both. Labels say which photograph a patch came from.
    """
    from sklearn.datasets import load_sample_images

    if split not in ("train", "test", "all"):
        raise NoiseshiftError(f"photos split must be train, test or all, not {split!r}")
    if not 8 <= size <= 256:
        raise NoiseshiftError(f"photos patch size must be in 8..256, got {size}")
    stride = stride or max(4, size // 4)
    xs, ys = [], []
    for k, img in enumerate(load_sample_images().images):
        w = img.shape[1]
        cut = int(round((1 - PHOTO_HELD_OUT) * w))
        lo, hi = {"train": (0, cut), "test": (cut, w), "all": (0, w)}[split]
        p = _patches(img, size, stride, lo, hi)
        xs.append(p)
        ys.append(np.full(len(p), k))
    x = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return Dataset(
        x=x.contiguous(), labels=torch.from_numpy(np.concatenate(ys)).long(),
        spec={"name": "photos", "side": size, "split": split}, num_classes=2,
        info={"stride": stride},
    )
