"""The one `--data` grammar, and `load_data` for a spec string or a stored spec dict.

    digits | gmm | photos[:train|test|all]     a built-in by name
    PATH.npy | PATH.npz[:KEY] | PATH.h5[:KEY]  an array file (KEY: the array inside)
    FOLDER                                     an image folder (PNG/JPEG/WebP), --size
    latents:PATH[:KEY]                         VAE latents with their scaling factor

`parse_data_spec(text, size=...)` turns the text into a JSON-able dict that checkpoints and
each run's `model` attribute store, so later commands find the data without being told;
`load_data(spec)` loads either form. An image side is always the key "side" (`--size` on
the command line); specs stored before that said "size" for photos and image folders, and
`canonical_spec` reads them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import NoiseshiftError
from .base import Dataset
from .builtin import load_digits, load_photos
from .files import ARRAY_SUFFIXES, load_array, load_latents
from .images import load_image_folder
from .mixture import make_gmm

BUILTINS = ("digits", "gmm", "photos")
_GMM_KEYS = ("dim", "components", "std", "seed", "n")
#: The spec key of an image side, and the key older files stored for photos and folders.
SIDE, OLD_SIDE = "side", "size"


def canonical_spec(spec: dict) -> dict:
    """A stored spec with today's keys: an old "size" becomes "side"."""
    spec = dict(spec)
    if OLD_SIDE in spec and spec.get("name") in ("digits", "photos", "images"):
        spec.setdefault(SIDE, spec.pop(OLD_SIDE))
    return spec


def _split_key(text: str) -> tuple[str, str | None]:
    """'a.h5:x' -> ('a.h5', 'x') when 'a.h5' names an array file; else (text, None)."""
    head, sep, key = text.rpartition(":")
    if sep and key and Path(head).suffix.lower() in ARRAY_SUFFIXES and "/" not in key:
        return head, key
    return text, None


def _builtin(name: str, arg: str | None, size: int | None, dim: int | None) -> dict:
    if name == "digits":
        return {"name": "digits", SIDE: size or 16}
    if name == "gmm":
        return {"name": "gmm", "dim": dim or 64, "components": 8, "std": 0.25, "seed": 0,
                "n": 4096}
    return {"name": "photos", SIDE: size or 32, "split": arg or "train"}


def parse_data_spec(text: str | dict, *, size: int | None = None,
                    dim: int | None = None) -> dict:
    """A `--data` value as a spec dict (see the module docstring); `size` is the image side
    (digits, photos, image folders), `dim` the mixture's dimension. Paths are made absolute
    so a stored spec still finds its file from another directory."""
    if isinstance(text, dict):
        return canonical_spec(text)
    text = str(text).strip()
    if not text:  # Path("") is the current folder: every image under it would be read
        raise NoiseshiftError("--data is empty: give a built-in name, an array file, an "
                              "image folder or latents:PATH")
    name, _, arg = text.partition(":")
    if name in BUILTINS and (not arg or name == "photos"):
        return _builtin(name, arg or None, size, dim)
    if name == "latents":
        if not arg:
            raise NoiseshiftError("latents:PATH needs a path, e.g. latents:latents.h5")
        path, key = _split_key(arg)
        if "\0" in path:
            raise NoiseshiftError("latents:PATH holds a NUL byte")
        spec = {"name": "latents", "path": str(Path(path).resolve())}
        return {**spec, "key": key} if key else spec
    try:
        return _path_spec(text, size)
    except (OSError, ValueError, RuntimeError) as e:  # NUL, too long a name, a symlink loop
        raise NoiseshiftError(f"--data {text[:60]!r} is not a usable path ({e})") from None


def _path_spec(text: str, size: int | None) -> dict:
    path, key = _split_key(text)
    p = Path(path)
    if p.is_dir():
        return {"name": "images", "path": str(p.resolve()), SIDE: size or 32}
    if p.suffix.lower() in ARRAY_SUFFIXES:
        if not p.exists():
            raise NoiseshiftError("no such file", p)
        spec = {"name": "file", "path": str(p.resolve())}
        return {**spec, "key": key} if key else spec
    if p.exists():
        raise NoiseshiftError("not data: give an array file (.npy, .npz, .h5) or an image "
                              "folder", p)
    if "/" in text or "." in text:
        raise NoiseshiftError("no such file or folder", p)
    raise NoiseshiftError(f"unknown built-in data {text!r}: use one of {', '.join(BUILTINS)}, "
                          f"an array file, an image folder or latents:PATH")


def load_data(spec: str | dict = "digits", **options) -> Dataset:
    """A dataset from a spec dict (as stored, old keys too) or a `--data` string; keyword
    options (side or size, dim, ...) override the spec's."""
    side = options.pop(OLD_SIDE, None) or options.pop(SIDE, None)
    spec = parse_data_spec(spec, size=side, dim=options.get("dim"))
    opts = {**{k: v for k, v in spec.items() if k != "name"},
            **{k: v for k, v in {**options, SIDE: side}.items() if v is not None}}
    name = spec.get("name")
    if name == "digits":
        return load_digits(side=opts.get(SIDE, 16))
    if name == "gmm":
        return make_gmm(**{k: v for k, v in opts.items() if k in _GMM_KEYS})
    if name == "photos":
        return load_photos(size=opts.get(SIDE, 32), split=opts.get("split", "train"),
                           stride=opts.get("stride"))
    if name == "file":
        return load_array(opts["path"], opts.get("key"))
    if name == "latents":
        return load_latents(opts["path"], opts.get("key"), opts.get("scaling_factor"),
                            opts.get("shift_factor"))
    if name == "images":
        return load_image_folder(opts["path"], size=opts.get(SIDE, 32))
    raise NoiseshiftError(f"unknown data {name!r} in a stored spec: use one of "
                          f"{', '.join(BUILTINS)}, file, images or latents")


def describe_spec(spec: dict | str | None) -> str:
    """A short human name for a spec: what a user would type as --data."""
    if not isinstance(spec, dict):
        return str(spec)
    name = spec.get("name")
    if name in ("file", "images"):
        return spec["path"] + (f":{spec['key']}" if spec.get("key") else "")
    if name == "latents":
        return f"latents:{spec['path']}"
    if name == "photos" and spec.get("split", "train") != "train":
        return f"photos:{spec['split']}"
    return str(name)


def check_shape(dataset: Dataset, shape, what: str, path=None) -> None:
    """Raise unless the data's sample shape is `shape` (a model's or an estimator's)."""
    if tuple(dataset.shape) != tuple(shape):
        raise NoiseshiftError(f"data {describe_spec(dataset.spec)} have samples of shape "
                              f"{tuple(dataset.shape)}, but the {what} reads "
                              f"{tuple(shape)}", path)
