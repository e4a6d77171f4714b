"""Image folders: PNG, JPEG and WebP through Pillow (the `images` extra), resized and centre-
cropped to a square size, labels from subfolder names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import NoiseshiftError
from .base import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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
            return im.copy()
    except Exception as e:  # Pillow raises many types for a damaged file
        raise NoiseshiftError(f"cannot read image ({type(e).__name__}: {e})", path) from e


def load_image_folder(path: str | Path, size: int = 32) -> Dataset:
    """Every PNG/JPEG/WebP under `path`, as (N, C, size, size) in [-1, 1]. C = 1 when every
    image is greyscale, else 3 (greyscale, palette and RGBA images are converted to RGB)."""
    folder = Path(path)
    if not folder.is_dir():
        raise NoiseshiftError("no such folder", folder)
    if not 8 <= size <= 1024:
        raise NoiseshiftError(f"--size must be in 8..1024, got {size}", folder)
    image_cls = _pil()
    files, classes = list_images(folder)
    images = [_open(p, image_cls) for p in files]
    grey = all(im.mode in ("1", "L", "I;16", "I", "F") for im in images)
    mode = "L" if grey else "RGB"
    arrs = []
    for im in images:
        a = np.asarray(_square(im.convert(mode), size, image_cls), dtype=np.float32)
        arrs.append(a[None] if grey else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrs)) / 127.5 - 1.0
    names = sorted(set(classes))
    labels, k = None, 0
    if len(names) > 1 or names != [""]:
        labels = torch.tensor([names.index(c) for c in classes], dtype=torch.int64)
        k = len(names)
    return Dataset(x=x.contiguous(), labels=labels, num_classes=k,
                   spec={"name": "images", "path": str(folder), "size": size},
                   info={"classes": names if labels is not None else [], "files": len(files)})
