"""Feature spaces other papers use, from local weights: `--features SPEC` for `report` (and
`extractor_space` for a bench or tune).

- ``inception:PATH``: the FID Inception-v3 (torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth``, pytorch-fid's ``pt_inception-...`` of the
  same hash), built by torch-fidelity's `FeatureExtractorInceptionV3`
  (2048-d pool3 features). The network is torch-fidelity's, not re-implemented here.
- ``dinov2:PATH``: a DINOv2 ViT checkpoint (timm, or Meta's torch hub ``.pth``) through timm
  (the CLS token; Stein et al. 2023 use ViT-L/14 at 224 px).
- ``module:PKG.MOD:FN``: any callable the user trusts, images in, features (N, k) out.
- ``export:PATH``: a `torch.export.save`d program (``.pt2``). Why beside ``module:``: the file
  carries the network and its weights, and loading it runs no pickled Python (a pickled
  nn.Module would need ``torch.load(weights_only=False)``); TorchScript, the older way, is
  deprecated in torch 2.13.

Images reach every extractor as torchmetrics and torch-fidelity take them: uint8 (N, C, H, W),
quantised from [-1, 1] as ``round((x + 1) * 127.5)`` clipped to 0..255 (what diffusers' image
conversion writes to PNG). Inception and DINOv2 get 3 channels (grey repeated). Inception
resizes inside torch-fidelity (its TF1-exact bilinear resize to 299, the reference FID's);
DINOv2 images are resized here in float from the uint8 values, bicubic with antialiasing, to
224 px, then ImageNet-normalised (clean-fid's point: never resize the quantised uint8 image
with an aliasing filter). ``module:`` and ``export:`` get the uint8 images as they are.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NoiseshiftError
from ..io.checkpoints import load_weights
from .quality import (
    FeatureSpace,
    _fd_values,
    _gram_blocks,
    _kid_values,
    _poly_kernel,
    fd_reference,
    kernel_mean_offdiagonal,
)

KINDS = ("inception", "dinov2", "module", "export")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DINO_SIDE = 224
# the embedding width of each DINOv2 ViT in timm, read from a checkpoint's cls_token
DINO_ARCH = {384: "vit_small_patch14_dinov2", 768: "vit_base_patch14_dinov2",
             1024: "vit_large_patch14_dinov2", 1536: "vit_giant_patch14_dinov2"}


@dataclass
class Extractor:
    """A feature extractor: ``fn`` maps uint8 images (N, C, H, W) to features (N, k);
    ``label`` says what space the numbers are in."""

    fn: object
    label: str
    rgb: bool = False
    batch_size: int = 256

    def __call__(self, x) -> np.ndarray:
        """Features (float64, (N, k)) of samples ``x`` in [-1, 1], quantised to uint8."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if x.ndim != 4:
            raise NoiseshiftError(f"--features needs image samples (N, C, H, W), got shape "
                                  f"{tuple(x.shape)}")
        out = []
        with torch.no_grad():
            for xb in x.split(self.batch_size):
                img = quantise(xb)
                if self.rgb and img.shape[1] == 1:
                    img = img.expand(-1, 3, -1, -1)
                f = torch.as_tensor(self.fn(img))
                out.append(f.reshape(len(img), -1).double().cpu())
        return torch.cat(out).numpy()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] as uint8 images: round((x + 1) * 127.5), clipped."""
    return ((x.double() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def parse_features(spec: str) -> Extractor:
    """The extractor named by ``spec`` (KIND:ARG, see the module docstring)."""
    kind, _, arg = str(spec).partition(":")
    if kind not in KINDS or not arg:
        raise NoiseshiftError(f"--features {spec!r}: use inception:PATH, dinov2:PATH, "
                              f"module:PKG.MOD:FN or export:PATH")
    if kind == "module":
        return Extractor(_callable(arg), f"module {arg}")
    path = Path(arg)
    if not path.is_file():
        raise NoiseshiftError(f"no such weights file for --features {kind}:PATH", path)
    return {"inception": _inception, "dinov2": _dinov2, "export": _exported}[kind](path)


def _callable(target: str):
    mod, _, name = target.rpartition(":")
    if not mod or not name:
        raise NoiseshiftError(f"--features module:{target}: name a callable as PKG.MOD:FN")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise NoiseshiftError(f"--features module:{target}: cannot import it ({e})") from None
    if not callable(fn):
        raise NoiseshiftError(f"--features module:{target} is not callable")
    return fn


def optional_import(module: str, what: str):
    """``module``, imported, or a one-line error saying what needs it and how to get it."""
    _torchvision_python_only()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NoiseshiftError(f"{what} needs {module.split('.')[0]}, which does not import "
                              f"here ({e}); pip install {what.split()[0]}") from None
    except (RuntimeError, OSError) as e:  # a compiled dependency built for another torch
        raise NoiseshiftError(f"{what}: {module.split('.')[0]} fails to import here "
                              f"({type(e).__name__}: {e}); install the torchvision built "
                              f"for this torch") from None


@functools.cache
def _torchvision_python_only() -> None:
    """PyPI's torchvision wheels are CUDA builds: beside a CPU torch their C extension (the
    detection ops) does not load, and torchvision 0.28 then fails at import, registering
    fake kernels for two of those ops. torch-fidelity and timm import torchvision, but their
    networks use none of its ops: declaring the two lets its Python import."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or "torchvision" in sys.modules or not spec.submodule_search_locations:
        return
    lib = next(Path(spec.submodule_search_locations[0]).glob("_C.*"), None)
    try:
        if lib is not None:
            torch.ops.load_library(str(lib))  # as torchvision's own import would
            return
    except (OSError, RuntimeError):
        pass
    for op in ("nms", "qnms"):
        torch.library.define(f"torchvision::{op}",
                             "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _inception(path: Path) -> Extractor:
    fid = optional_import("torch_fidelity.feature_extractor_inceptionv3",
                    "torch-fidelity for --features inception:PATH")
    net = fid.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(path)).eval()
    return Extractor(lambda img: net(img)[0], f"Inception-v3 pool3 (2048-d, {path.name}, "
                     f"torch-fidelity)", rgb=True, batch_size=64)


def _dinov2(path: Path) -> Extractor:
    timm = optional_import("timm", "timm for --features dinov2:PATH")
    state = _state_dict(path)
    width = int(state["cls_token"].shape[-1]) if "cls_token" in state else None
    if width not in DINO_ARCH:
        raise NoiseshiftError("not a DINOv2 ViT checkpoint (no cls_token of a known width)",
                              path)
    arch = DINO_ARCH[width]
    net = timm.create_model(arch, pretrained=True, num_classes=0, img_size=DINO_SIDE,
                            pretrained_cfg_overlay={"file": str(path)}).eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)

    def fn(img):
        x = F.interpolate(img.float() / 255, size=(DINO_SIDE, DINO_SIDE), mode="bicubic",
                          antialias=True, align_corners=False)
        return net((x - mean) / std)

    return Extractor(fn, f"DINOv2 {arch} CLS ({width}-d, {path.name}, timm)", rgb=True,
                     batch_size=64)


def _state_dict(path: Path) -> dict:
    state = load_weights(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise NoiseshiftError("not a state dict", path)
    return state


def _exported(path: Path) -> Extractor:
    try:
        net = torch.export.load(str(path)).module()
    except Exception as e:  # torch.export raises many kinds for a wrong file
        raise NoiseshiftError(f"not a torch.export program ({type(e).__name__}); save one "
                              f"with torch.export.save", path) from e
    return Extractor(net, f"exported module {path.name}")


def kernel_sums_and_radii(x: np.ndarray, k: int = 3,
                          block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(row sums of k(x, x), each row's distance to its k-th nearest other row), from one
    pass over the Gram matrix (|a - b|^2 = |a|^2 + |b|^2 - 2 a.b, as sklearn computes it),
    each block of the symmetric matrix computed once and read by its rows and its columns."""
    sq = (x * x).sum(1)
    sums = np.zeros(len(x))
    near = np.full((len(x), k + 1), np.inf)  # the k + 1 smallest squared distances so far
    starts = range(0, len(x), block)
    for a in starts:
        ra = slice(a, a + block)
        for b in starts[starts.index(a):]:
            rb = slice(b, b + block)
            g = x[ra] @ x[rb].T
            kern, dist2 = _poly_kernel(g, x.shape[1]), _squared_distances(g, sq[ra], sq[rb])
            sums[ra] += kern.sum(1)
            near[ra] = _smallest(near[ra], dist2, k + 1)
            if b != a:
                sums[rb] += kern.sum(0)
                near[rb] = _smallest(near[rb], dist2.T, k + 1)
    # the row itself (distance ~0) is among the k + 1 smallest: the largest is the k-th other
    return sums, np.sqrt(np.maximum(near.max(1), 0))


def _smallest(near: np.ndarray, more: np.ndarray, m: int) -> np.ndarray:
    if more.shape[1] > m:
        more = np.partition(more, m - 1, axis=1)[:, :m]
    both = np.concatenate([near, more], axis=1)
    return np.partition(both, m - 1, axis=1)[:, :m]


def _squared_distances(gram: np.ndarray, sq_rows: np.ndarray, sq_cols: np.ndarray):
    """|a|^2 + |b|^2 - 2 a.b, in place of one temporary per term."""
    d2 = gram * -2
    d2 += sq_rows[:, None]
    d2 += sq_cols[None, :]
    return d2


def cross_pass(fake: np.ndarray, real: np.ndarray, real_radii: np.ndarray,
                fake_radii: np.ndarray):
    """(row sums of k(fake, real), in_real, in_fake as `_coverage` gives them), from one
    pass over the fake x real Gram matrix."""
    sf, sr = (fake * fake).sum(1), (real * real).sum(1)
    sums = np.empty(len(fake))
    in_real = np.empty((len(fake), len(real)), dtype=bool)
    in_fake = np.empty_like(in_real)
    for rows, g in _gram_blocks(fake, real):
        sums[rows] = _poly_kernel(g, fake.shape[1]).sum(1)
        dist2 = _squared_distances(g, sf[rows], sr)
        in_real[rows] = dist2 <= real_radii[None, :] ** 2
        in_fake[rows] = dist2 <= fake_radii[rows, None] ** 2
    return sums, in_real, in_fake


class ExtractorSpace(FeatureSpace):
    """A `FeatureSpace` whose features come from an `Extractor`: FD, KID and precision /
    recall in it (`analysis.quality.quality` adds KID for these spaces)."""

    def __init__(self, reference, extractor: Extractor):
        self.kind = "extractor"
        self.extractor = extractor
        self.reference = extractor(reference)
        self._radii: dict[int, np.ndarray] = {}
        self._kid_real: float | None = None
        self._fd_ref = None
        self._memo: list[tuple] = []  # (array, tag, what was computed from it)

    def __call__(self, x) -> np.ndarray:
        """The features of samples ``x``, extracted once per array."""
        return self.memo(x, lambda: self.extractor(x), tag="features")

    def memo(self, key, compute, tag: str = "terms"):
        """``compute()``, once per (``key`` object, ``tag``): kept with ``key`` itself, so an
        identity match cannot be a reused id."""
        for k, t, value in self._memo:
            if k is key and t == tag:
                return value
        value = compute()
        self._memo.append((key, tag, value))
        return value

    @property
    def label(self) -> str:
        return self.extractor.label

    def fd_reference(self):
        """`analysis.quality.fd_reference` of the reference (computed once)."""
        if self._fd_ref is None:
            self._fd_ref = fd_reference(self.reference)
        return self._fd_ref

    def radii(self, k: int = 3) -> np.ndarray:
        """k-NN radii of the reference features, and with them (one pass over the reference's
        Gram matrix, the costliest step of a wide space) KID's reference term."""
        if k not in self._radii:
            sums, self._radii[k] = kernel_sums_and_radii(self.reference, k)
            if self._kid_real is None:
                self._kid_real = kernel_mean_offdiagonal(self.reference, sums)
        return self._radii[k]

    def kid_real(self) -> float:
        """The reference's own kernel term of KID (computed once)."""
        if self._kid_real is None:
            self.radii()
        return self._kid_real

    def terms(self, f: np.ndarray) -> dict:
        """The per-sample FD and KID values and the k-NN coverage of features ``f``, computed
        once per array, since a report needs them for the run and again for its paired
        difference: one pass over f's own Gram matrix and one over f x reference."""
        def compute() -> dict:
            own, radii = kernel_sums_and_radii(f, 3)
            cross, in_real, in_fake = cross_pass(f, self.reference, self.radii(), radii)
            return {"fd": _fd_values(f, self.fd_reference()),
                    "kid": _kid_values(f, self.reference, self.kid_real(), (own, cross)),
                    "coverage": (in_real, in_fake)}

        return self.memo(f, compute)


def extractor_space(data, spec: str) -> ExtractorSpace:
    """The feature space ``spec`` (`parse_features`) over a `Dataset`'s images."""
    return ExtractorSpace(data.x, parse_features(spec))


__all__ = ["DINO_ARCH", "ExtractorSpace", "Extractor", "KINDS", "cross_pass", "extractor_space",
           "kernel_sums_and_radii", "optional_import", "parse_features", "quantise"]
