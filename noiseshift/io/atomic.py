"""The one way noiseshift puts a file at its final path: all of it, or nothing.

A file is written to a new hidden temporary file beside its final path (same folder, so same
file system), flushed to disk with fsync, and moved over the final path with one rename. A
crash or a kill at any moment leaves either the old file or the new one at the final path,
never half of one; at worst a hidden ``.<name>.<random>.<tag>`` file stays behind.

The temporary file is created with mode 0666 and the umask applied, like any file the tool
opens for writing (0644 under the usual umask), so the final file gets the same permissions
as every other file noiseshift writes. (``tempfile.mkstemp`` would make it 0600.)

    with atomic_path("model.pt") as tmp:
        torch.save(obj, tmp)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "copy_file", "folder_lock", "fsync_file", "install", "sibling_temp"]


def sibling_temp(path, tag: str = "tmp") -> Path:
    """A new empty hidden file beside `path` (same file system, so a rename is atomic),
    created with the usual permissions (the umask applies, unlike mkstemp's 0600)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def fsync_file(path) -> None:
    """Flush a file's data to disk (whoever else has it open)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(tmp, final, replace: bool = True) -> None:
    """fsync a finished temporary file and move it to its final name atomically.

    With ``replace=False`` a file that appeared at `final` meanwhile is not clobbered:
    FileExistsError, and `tmp` is left for the caller to remove.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_file(tmp)
    if replace:
        os.replace(tmp, final)
        return
    try:  # link() refuses to clobber a file another process created meanwhile
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:
        os.replace(tmp, final)  # no hard links on this file system
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path, tag: str = "tmp", replace: bool = True) -> Iterator[Path]:
    """Yield a new temporary file beside `path` to write; when the block exits cleanly it is
    fsynced and moved to `path` (see `install`), otherwise removed."""
    tmp = sibling_temp(path, tag)
    try:
        yield tmp
        install(tmp, path, replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_file(src, dst) -> None:
    """Copy a file's bytes and permission bits (to start a temporary copy of it)."""
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


@contextlib.contextmanager
def folder_lock(folder) -> Iterator[None]:
    """Serialise writers that replace files in one folder (best effort: some network file
    systems have no flock)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
