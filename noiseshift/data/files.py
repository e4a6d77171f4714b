"""User arrays (.npy, .npz, .h5 with an optional key) and VAE latents with their scaling factor."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import NoiseshiftError
from .base import Dataset, check_finite

ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
_ARRAY_KEYS = ("x", "data", "images", "latents", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets")
#: Where a latents file keeps its factors: HDF5 attributes (file or dataset) or npz keys.
SCALE_KEYS = ("scaling_factor", "shift_factor")


def _read(path: Path, key: str | None):
    """(array, labels or None, attrs dict) from a .npy, .npz or .h5 file."""
    labels, attrs = None, {}
    if path.suffix == ".npy":
        if key:
            raise NoiseshiftError(f"a .npy file holds one array; drop ':{key}'", path)
        return np.load(path, allow_pickle=False), None, {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arr = _pick(z, key, path)
            labels = next((z[k] for k in _LABEL_KEYS if k in z), None)
            attrs = {k: float(z[k]) for k in SCALE_KEYS if k in z}
        return arr, labels, attrs
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            ds = _pick(f, key, path)
            if not isinstance(ds, h5py.Dataset):
                raise NoiseshiftError(f"{ds.name} is a group, not an array", path)
            arr = ds[()]
            labels = next((f[k][()] for k in _LABEL_KEYS if k in f), None)
            for src in (f.attrs, ds.attrs):
                attrs.update({k: float(src[k]) for k in SCALE_KEYS if k in src})
        return arr, labels, attrs
    raise NoiseshiftError("unknown data format; use .npy, .npz or .h5 (or an image folder)",
                          path)


def _pick(container, key, path):
    if key:
        if key not in container:
            raise NoiseshiftError(f"no array {key!r} in the file (it has "
                                  f"{sorted(container.keys())})", path)
        return container[key]
    for k in _ARRAY_KEYS:
        if k in container:
            return container[k]
    names = list(container.keys())
    if len(names) == 1:
        return container[names[0]]
    raise NoiseshiftError(f"cannot tell which array is the data among {names}; "
                          f"name it with PATH:KEY", path)


def _load(path, key):
    path = Path(path)
    if not path.exists():
        raise NoiseshiftError("no such file", path)
    try:
        return _read(path, key)
    except NoiseshiftError:
        raise
    except Exception as e:  # numpy and h5py raise many types for a damaged file
        raise NoiseshiftError(f"cannot read data ({type(e).__name__}: {e})", path) from e


def _as_float32(arr, path) -> np.ndarray:
    """The array in the working dtype (native byte order), refused unless it is real, of
    rank 2-4, N >= 2 and non-empty in every dimension, and finite after the cast (a float64
    1e300 is finite, and Inf in float32)."""
    shape = getattr(arr, "shape", ())
    if arr.dtype.kind not in "fiu" or len(shape) not in (2, 3, 4) or shape[0] < 2 or \
            0 in shape:
        raise NoiseshiftError(
            f"expected a real array of shape (N, d), (N, H, W) or (N, C, H, W) with N >= 2 "
            f"and no empty dimension, got {arr.dtype} {shape} (rank {len(shape)})", path)
    with np.errstate(over="ignore"):  # an overflow is an Inf, which the next line names
        x = np.asarray(arr, dtype=np.float32)
    check_finite(x, path, "data (as float32)")
    return x


def _labels(labels, n: int, path) -> torch.Tensor | None:
    """Class labels as int64 (N,): integers >= 0, or floats holding integers."""
    if labels is None:
        return None
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:  # a column of labels
        lab = lab[:, 0]
    if lab.dtype.kind == "f" and np.isfinite(lab).all() and (lab == np.round(lab)).all():
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iu" or lab.ndim != 1 or (lab.size and lab.min() < 0):
        raise NoiseshiftError(f"labels must be non-negative integers of shape (N,), got "
                              f"{lab.dtype} {lab.shape}", path)
    if lab.shape[0] != n:
        raise NoiseshiftError(f"{lab.shape[0]} labels for {n} samples", path)
    return torch.from_numpy(lab.astype(np.int64))


def _dataset(arr, labels, path, spec: dict, info: dict | None = None) -> Dataset:
    x = torch.from_numpy(_as_float32(arr, path))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    lab = _labels(labels, x.shape[0], path)
    return Dataset(x=x, labels=lab, spec=spec, info=info or {},
                   num_classes=0 if lab is None else int(lab.max()) + 1)


def load_array(path: str | Path, key: str | None = None) -> Dataset:
    """Data from .npy, .npz or .h5 (array `key`, else x/data/images/latents or the only one).

    (N, d) is a batch of vectors, (N, H, W) greyscale images, (N, C, H, W) images.
    """
    arr, labels, _ = _load(path, key)
    spec = {"name": "file", "path": str(path)}
    if key:
        spec["key"] = key
    return _dataset(arr, labels, path, spec)


def load_latents(path: str | Path, key: str | None = None,
                 scaling_factor: float | None = None, shift_factor: float | None = None):
    """VAE latents, already in diffusion space ((z - shift) * scaling, as `noiseshift
    encode` writes them), with the scaling factor the file carries (HDF5 attribute or npz
    key `scaling_factor`; `shift_factor` optional). Latents without one are refused: a
    model's states and the estimator's training data would differ by an unknown scale."""
    arr, labels, attrs = _load(path, key)
    scale = attrs.get("scaling_factor", scaling_factor)
    if scale is None:
        raise NoiseshiftError("latents without a scaling factor: store it as the HDF5 "
                              "attribute or npz key `scaling_factor` (noiseshift encode does)",
                              path)
    shift = attrs.get("shift_factor", shift_factor)
    if not math.isfinite(scale) or scale == 0 or not math.isfinite(shift or 0.0):
        raise NoiseshiftError(f"latents with scaling factor {scale} and shift {shift}: the "
                              f"scaling factor must be finite and non-zero, the shift finite",
                              path)
    spec = {"name": "latents", "path": str(path), "scaling_factor": float(scale)}
    if key:
        spec["key"] = key
    if shift is not None:
        spec["shift_factor"] = float(shift)
    if np.asarray(arr).ndim != 4:
        raise NoiseshiftError(f"latents must be (N, C, H, W), got shape {arr.shape} "
                              f"(rank {arr.ndim})", path)
    return _dataset(arr, labels, path, spec, {"scaling_factor": float(scale),
                                              "shift_factor": shift})
