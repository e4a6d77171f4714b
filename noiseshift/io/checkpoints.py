"""Checkpoints: ``torch.save`` payloads ``{"format", "version", ...}`` of tensors, strings and
numbers, written atomically and read back with ``weights_only=True``, so that nothing in a
checkpoint is ever executed. Configs travel as JSON strings.

Models, estimators, training states and the digits classifier all use this one reader and
writer; each names its own format tag and words its own problems (`Wording`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .atomic import atomic_path

VERSION = 1

__all__ = ["VERSION", "Wording", "json_entry", "read_checkpoint", "save_checkpoint"]


@dataclass(frozen=True)
class Wording:
    """How `read_checkpoint` words each problem (one line; the file is named by the error).

    Fields are format strings; they may use {error} (an exception's type), {found} (the
    format or version in the file), {fmt} and {version} (those expected).
    """

    missing: str = "no such file"
    folder: str = "is a folder, not a checkpoint"
    unreadable: str = "not a noiseshift checkpoint ({error})"
    untagged: str = "not a noiseshift checkpoint (no format tag)"
    other_format: str = "this is a {found!r} checkpoint, expected {fmt!r}"
    version: str = ("unsupported checkpoint version {found!r} (this noiseshift reads version "
                    "{version})")


def save_checkpoint(path, fmt: str, fields: dict, version: int = VERSION) -> Path:
    """torch.save ``{"format": fmt, "version": version, **fields}`` atomically (a temporary
    file beside `path`, fsynced, renamed over it), creating the folder if needed."""
    import torch  # here, not at the top: `inspect` reads trajectory files without torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": fmt, "version": version, **fields}, tmp)
    return path


def read_checkpoint(path, fmt: str, device="cpu", *, version: int = VERSION,
                    wording: Wording = Wording()) -> dict:
    """Load a checkpoint dict safely (``weights_only=True``, tensors mapped to `device`) and
    check its format tag and version; CheckpointError(problem, path) otherwise."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(wording.folder, path)
    if not path.exists():
        raise CheckpointError(wording.missing, path)
    ckpt = load_weights(path, device, wording.unreadable)
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("noiseshift."):
        raise CheckpointError(wording.untagged.format(fmt=fmt), path)
    if ckpt["format"] != fmt:
        raise CheckpointError(wording.other_format.format(found=ckpt["format"], fmt=fmt), path)
    if ckpt.get("version") != version:
        raise CheckpointError(wording.version.format(found=ckpt.get("version"),
                                                     version=version), path)
    return ckpt



def load_weights(path, device="cpu", unreadable: str = "cannot read the checkpoint ({error})"):
    """What ``torch.load(path, weights_only=True)`` gives (tensors, containers, numbers;
    never code), or CheckpointError(unreadable, path): the one place a file is unpickled."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch's hint about a bare pickle's protocol: such a file either loads under
            # weights_only or is refused in one line; the hint would only alarm.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(unreadable.format(error=type(e).__name__), path) from e

def json_entry(ckpt: dict, key: str, default: str | None = None):
    """A checkpoint's JSON string entry, parsed. Raises KeyError (missing and no `default`),
    TypeError (not a string) or ValueError (not JSON) for the caller to word."""
    return json.loads(ckpt[key] if default is None else ckpt.get(key, default))
