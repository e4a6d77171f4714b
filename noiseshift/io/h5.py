"""HDF5 helpers shared by the trajectory and estimates files: format constants, the guard that
turns whatever h5py raises into a one-line TrajectoryError, safe opening, attribute and
member checks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import NoiseshiftError, TrajectoryError

FORMAT = "noiseshift.trajectories"
VERSION = 1
ESTIMATES_FORMAT = "noiseshift.estimates"
ESTIMATES_VERSION = 1

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# What h5py raises on a damaged or odd file; all of it becomes a TrajectoryError.
H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError,
             AttributeError, NotImplementedError, OverflowError, RecursionError,
             UnicodeDecodeError, MemoryError)


@contextlib.contextmanager
def guard(path, what: str):
    """Turn whatever h5py raises while reading `what` into a one-line TrajectoryError."""
    try:
        yield
    except NoiseshiftError:
        raise
    except H5_ERRORS as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise TrajectoryError(f"cannot read {what} ({msg})", path) from e


# -- values and attributes ------------------------------------------------------------------

def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj) -> str:
    """A dict (or None, or an object with `to_dict`) as sorted JSON, numpy values included."""
    if obj is None:
        obj = {}
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if not isinstance(obj, dict):
        raise TypeError(f"expected a dict, got {type(obj).__name__}")
    return json.dumps(obj, sort_keys=True, default=_json_default)


def set_str(obj, key: str, text: str) -> None:
    """A fixed-length UTF-8 string attribute. Variable-length strings live in HDF5's global
    heap, and a damaged heap can hang or crash the HDF5 library itself (3000 random byte
    flips: 9 hangs or segfaults with variable-length attributes, none with fixed-length)."""
    raw = text.encode("utf-8")
    obj.attrs.create(key, np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw)))))


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on the GPU
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def str_attr(v) -> str | None:
    """An HDF5 string attribute as str (h5py gives str, bytes or a 0-d array)."""
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, str):
        return v
    return None


def scalar_int(v) -> int | None:
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.reshape(())[()]
    return int(v) if is_int(v) else None


def check_run_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or name != name.strip():
        raise NoiseshiftError(f"bad run name {name!r}: use a non-empty name without '/'")
    return name


def member(group, name: str, path, where: str, kind=h5py.Dataset):
    """group[name] if it is a plain (hard-linked, local) object of the given kind, else None.

    Soft and external links are refused before they are followed: a trajectory file never
    makes noiseshift read another file.
    """
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        kind_ = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(
            type(link), "a link")
        raise TrajectoryError(f"{where}{name} is {kind_}; noiseshift reads plain datasets "
                              f"only", path)
    obj = group[name]
    if not isinstance(obj, kind):
        want = "dataset" if kind is h5py.Dataset else "group"
        raise TrajectoryError(f"{where}{name} is not a {want}", path)
    if kind is h5py.Dataset and (obj.is_virtual or obj.external):
        raise TrajectoryError(f"{where}{name} keeps its data in other files; not allowed", path)
    return obj


# -- opening files and checking their root ----------------------------------------------------

def _fsize(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def open_h5(path) -> h5py.File:
    """Open an HDF5 file read-only, with a clear problem for anything that is not one.

    File locking is off so that a file another process is still recording can be inspected;
    the writer keeps the on-disk state consistent at every flush (see `io.writer`).
    """
    p = Path(path)
    if not p.exists():
        raise TrajectoryError("no such file", path)
    if p.is_dir():
        raise TrajectoryError("is a folder, not a file", path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            found = _find_signature(fh, size)
    except OSError as e:
        raise TrajectoryError(f"cannot read file ({e.strerror or e})", path) from e
    if size == 0:
        raise TrajectoryError("file is empty (0 bytes)", path)
    if not found:
        raise TrajectoryError("not an HDF5 file (no HDF5 signature)", path)
    try:
        return h5py.File(p, "r", locking=False)
    except H5_ERRORS as e:
        msg = " ".join(str(e).split())
        if "truncated file" in msg:
            raise TrajectoryError(
                f"HDF5 file is truncated ({_fsize(size)} on disk, cut short by a copy or a "
                f"disk filling up)", path) from e
        raise TrajectoryError(f"damaged HDF5 file, cannot open it ({msg})", path) from e


def _find_signature(fh, size: int) -> bool:
    """HDF5's signature sits at byte 0, 512, 1024, 2048, ... (after an optional user block)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        fh.seek(offset)
        if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def check_root(f: h5py.File, path, want: str, version: int) -> None:
    """The root says format `want`, at a version this noiseshift reads."""
    with guard(path, "the root attributes"):
        fmt = str_attr(f.attrs.get("format"))
        ver = f.attrs.get("version")
    if fmt is None:
        raise TrajectoryError(f"not a noiseshift file (`format` attribute missing or not a "
                              f"string; expected {want!r})", path)
    if fmt != want:
        if fmt == ESTIMATES_FORMAT:
            raise TrajectoryError("this is a noiseshift estimates file, not a trajectory "
                                  "file; pass the trajectory file it was made from", path)
        if fmt == FORMAT:
            raise TrajectoryError("this is a noiseshift trajectory file, not an estimates "
                                  "file", path)
        raise TrajectoryError(f"wrong format {fmt[:60]!r}; expected {want!r}", path)
    v = scalar_int(ver)
    if v is None:
        raise TrajectoryError(f"`version` attribute must be an integer, got {ver!r:.40}", path)
    if v > version:
        raise TrajectoryError(f"format version {v} is newer than this noiseshift supports "
                              f"({version}); upgrade noiseshift", path)
    if v < 1:
        raise TrajectoryError(f"bad format version {v}", path)


def runs_group(f: h5py.File, path, what: str = "runs") -> h5py.Group:
    """The non-empty /runs group."""
    with guard(path, "/runs"):
        g = member(f, "runs", path, "/", kind=h5py.Group)
        if g is None:
            raise TrajectoryError(f"no /runs group: the file holds no {what}", path)
        if len(g) == 0:
            raise TrajectoryError(f"/runs is empty: the file holds no {what}", path)
        return g


class ReadOnlyFile:
    """A noiseshift HDF5 file opened read-only: the root checked for format `fmt` at a
    readable version and a non-empty /runs group (`_runs`), then `_read()` by the subclass;
    the file is closed again if any of it fails. A context manager."""

    def __init__(self, path, fmt: str, version: int, what: str = "runs"):
        self.path = str(path)
        self._f = open_h5(path)
        try:
            check_root(self._f, self.path, fmt, version)
            self._runs = runs_group(self._f, self.path, what)
            self._read()
        except BaseException:
            self._f.close()
            raise

    def _read(self) -> None:
        """Read what the file holds beyond its root (subclasses)."""

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
