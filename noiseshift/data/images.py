"""Image folders: PNG, JPEG and WebP through Pillow (the `images` extra), resized and centre-
cropped to a square size, labels from subfolder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import NoiseshiftError
from .base import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Pillow modes by how their values map to [0, 255]: 8-bit modes convert with Pillow, 16-bit
#: greyscale is scaled (Pillow's own convert to L clips it at 255). Any other mode ("I", "F":
#: 32-bit values with no fixed range) is refused by name.
EIGHT_BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
GREY = ("1", "L") + SIXTEEN_BIT


def _pil():
    try:
        from PIL import Image  # optional: the `images` extra
    except ImportError as e:
        raise NoiseshiftError("image folders need Pillow: pip install 'noiseshift[images]'") from e
    return Image


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files under `folder` (sorted) and, when they sit in subfolders, one class name
    per file (the first-level subfolder); files directly in `folder` then get class ''."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise NoiseshiftError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder", folder)
    classes = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else ""
               for p in files]
    return files, classes


def _square(img, size: int, image_cls):
    """Resize the shorter side to `size` (bicubic), then crop the centre square."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), image_cls.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _open(path: Path, image_cls):
    try:
        with image_cls.open(path) as im:
            im.load()
            im = im.copy()
    except Exception as e:  # Pillow raises many types for a damaged file
        raise NoiseshiftError(f"cannot read image ({type(e).__name__}: {e})", path) from e
    if im.mode not in EIGHT_BIT + SIXTEEN_BIT:
        raise NoiseshiftError(f"image mode {im.mode!r} has no fixed range of values; save it "
                              f"as 8- or 16-bit greyscale or RGB", path)
    return im


def _pixels(im, mode: str, size: int, image_cls) -> np.ndarray:
    """(C, size, size) float32 in [0, 255]; 16-bit greyscale is scaled, then resized in
    float ("F"), since converting it to "L" would clip."""
    if im.mode in SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.float32) * (255.0 / 65535.0)
        a = np.asarray(_square(image_cls.fromarray(a, mode="F"), size, image_cls))
        return np.repeat(a[None], 1 if mode == "L" else 3, axis=0)
    a = np.asarray(_square(im.convert(mode), size, image_cls), dtype=np.float32)
    return a[None] if mode == "L" else a.transpose(2, 0, 1)


def load_image_folder(path: str | Path, size: int = 32) -> Dataset:
    """Every PNG/JPEG/WebP under `path`, as (N, C, size, size) in [-1, 1]. C = 1 when every
    image is greyscale (1-, 8- or 16-bit), else 3 (greyscale, palette and RGBA images are
    converted to RGB). Modes without a fixed range (32-bit "I", "F") are refused by name."""
    folder = Path(path)
    if not folder.is_dir():
        raise NoiseshiftError("no such folder", folder)
    if not 8 <= size <= 1024:
        raise NoiseshiftError(f"--size must be in 8..1024, got {size}", folder)
    image_cls = _pil()
    files, classes = list_images(folder)
    if len(files) < 2:
        raise NoiseshiftError(f"{len(files)} image in the folder; training and estimating "
                              f"need at least 2", folder)
    images = [_open(p, image_cls) for p in files]
    mode = "L" if all(im.mode in GREY for im in images) else "RGB"
    arrs = [_pixels(im, mode, size, image_cls) for im in images]
    x = torch.from_numpy(np.stack(arrs)) / 127.5 - 1.0
    names = sorted(set(classes))
    labels, k = None, 0
    if len(names) > 1 or names != [""]:
        labels = torch.tensor([names.index(c) for c in classes], dtype=torch.int64)
        k = len(names)
    return Dataset(x=x.contiguous(), labels=labels, num_classes=k,
                   spec={"name": "images", "path": str(folder), "side": size},
                   info={"classes": names if labels is not None else [], "files": len(files)})
