"""The one image-grid renderer: (N, C, H, W) images in [-1, 1] tiled into one picture and
saved as a PNG, with each image's class label in its corner when labels are given.

    save_grid(samples[:64], "grid.png", labels=labels[:64], title="unguided")

The tiling is plain numpy (`tile`) and the PNG holds one matplotlib image, not one axis per
sample, so a grid of 64 takes milliseconds. Greyscale for C = 1, RGB for C = 3."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import NoiseshiftError

__all__ = ["save_grid", "tile"]


def _images(images) -> np.ndarray:
    """A float64 (N, C, H, W) array from a numpy array or a torch tensor on any device."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise NoiseshiftError(f"a sample grid needs (N >= 1, 1 or 3, H, W) images, got "
                              f"{tuple(x.shape)}")
    return x


def tile(images, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, ncol*(W+pad)+pad, C) image in
    [0, 1] on a white background, row by row; ncol defaults to ceil(sqrt(N))."""
    x = _images(images)
    n, c, h, w = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / ncol))
    canvas = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad, c))
    pix = (np.clip(x, -1, 1) + 1) / 2
    for k in range(n):
        r, q = divmod(k, ncol)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y0:y0 + h, x0:x0 + w] = pix[k].transpose(1, 2, 0)
    return canvas


def save_grid(images, path, labels=None, title: str | None = None,
              ncol: int | None = None, dpi: int = 110) -> Path:
    """Save images as a PNG grid (ncol per row, default ceil(sqrt(N))); returns the path.
    labels: one class label per image, written in its top-left corner. title: default
    "N samples" (and what the labels are)."""
    from matplotlib.figure import Figure

    x = _images(images)
    n, _, h, w = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / ncol))
    img = tile(x, ncol)
    if title is None:
        title = f"{n} samples" + ("; corner: the class each was asked for"
                                  if labels is not None else "")
    fig = Figure(figsize=(0.8 * ncol + 0.2, 0.8 * rows + 0.5))
    ax = fig.subplots()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    if labels is not None:
        for j, label in enumerate(np.asarray(labels).reshape(-1)[:n]):
            r, q = divmod(j, ncol)
            # A white tag, so the label reads on any image (red on grey did not).
            ax.text(1 + q * (w + 1), 1 + r * (h + 1), str(int(label)), color="tab:red",
                    fontsize=8, fontweight="bold", va="top", ha="left",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.85})
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
