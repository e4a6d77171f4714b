"""The guard every writing command runs first: an output path must not be one of its inputs.

A command that writes over its own input replaces the user's data with its result and exits
0; nothing later can tell. Paths are compared resolved (symlinks, `..`) and, when both
exist, as the same file on disk (hard links); an existing file inside an input folder counts
as the input.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NoiseshiftError

__all__ = ["check_output_file", "input_paths", "refuse_overwriting_inputs"]


def input_paths(*inputs) -> list[Path]:
    """The existing files and folders among `inputs`: paths, strings as the options take
    them (``latents:``, ``diffusers:`` and ``from:`` prefixes, a ``:KEY`` or ``:RUN`` tail)
    and data-spec dicts (their "path"). Only what exists can be overwritten."""
    out = []
    for item in inputs:
        if isinstance(item, dict):
            item = item.get("path")
        if item is None:
            continue
        text = str(item)
        for prefix in ("diffusers:", "latents:", "from:"):
            text = text.removeprefix(prefix)
        for cand in (text, text.rpartition(":")[0]):
            if cand.strip() and Path(cand).exists():
                out.append(Path(cand))
    return out


def _same(a: Path, b: Path) -> bool:
    """Whether writing `a` replaces input `b`, or a file inside input folder `b`."""
    if a.resolve() == b.resolve():
        return True
    if b.is_dir() and a.exists() and b.resolve() in a.resolve().parents:
        return True
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(out, *inputs) -> None:
    """Raise a one-line NoiseshiftError when output `out` (a path, None, or a list of them)
    is the same file as one of `inputs`, or an existing file inside an input folder (a
    pipeline's weights, an image of the data)."""
    for o in out if isinstance(out, (list, tuple)) else [out]:
        if o is not None and any(_same(Path(o), p) for p in input_paths(*inputs)):
            raise NoiseshiftError("is one of this command's inputs; writing there would "
                                  "replace it: choose another output path", o)


def check_output_file(out, option: str = "--out") -> None:
    """Raise a one-line NoiseshiftError unless `out` can be a new or replaced file: not a
    folder, and in a folder that exists."""
    out = Path(out)
    if out.is_dir():
        raise NoiseshiftError(f"is a folder; {option} needs a file name", out)
    if not out.parent.is_dir():
        raise NoiseshiftError(f"folder {str(out.parent)!r} does not exist", out)
