"""The report's sample-quality numbers in a 2048-d feature space against torchmetrics' own FID
and KID on the same features, side by side.

Two stages, each timed for both, interleaved (so load from other processes hits both alike):

- ``metrics``: what follows extraction, on ``--n`` real and ``--n`` generated features
  (synthetic, Inception-like: 2048-d, non-negative, correlated; float32 as Inception gives
  them). noiseshift: `analysis.quality.quality` in an `ExtractorSpace` (FD, KID, precision,
  recall, each with its bootstrap CI, as `report` computes per run). torchmetrics:
  `KernelInceptionDistance` (one subset of all samples: the same KID) and
  `FrechetInceptionDistance` on the same features, update + compute.
- ``extract``: end to end on ``--images`` random images (3 x 32 x 32) per set through the
  FID Inception-v3 with random weights (the network, not its weights, is under test), loaded
  by `--features inception:PATH`; torchmetrics gets the same network as its ``feature``,
  and extracts each image once (KID keeps the features; FID reads those). Needs
  torch-fidelity.

Inception's cost per image (``extract``) grows with n and the metrics' (``metrics``) with
n^2: a report on 10,000 samples is extraction of 20,000 images plus ``metrics`` at n = 10,000.

    python bench/bench_features.py --stage metrics --n 10000 --repeats 2
    python bench/bench_features.py --stage extract --images 64 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from noiseshift.analysis.features import (
    Extractor,
    ExtractorSpace,
    optional_import,
    parse_features,
    quantise,
)
from noiseshift.analysis.quality import quality
from noiseshift.defaults import N_BOOT

D = 2048


def synthetic_features(n: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(64, D)) / 8
    f = np.abs(rng.normal(size=(n, 64)) @ basis + rng.normal(size=(n, D)) * 0.3 + shift)
    return f.astype(np.float32)


class Given(torch.nn.Module):
    """A 'network' handing out features it was given, in order: times what follows
    extraction through the real code paths of both libraries."""

    num_features = D

    def __init__(self, *feats):
        super().__init__()
        self.queue = [torch.as_tensor(f) for f in feats]

    def forward(self, img):
        return self.queue.pop(0)


def ours(real, fake, extractor_for, n_boot: int) -> None:
    space = ExtractorSpace(real, extractor_for())
    q = quality(fake, SimpleNamespace(mixture=None), space=space, n_boot=n_boot)
    assert np.isfinite(q["fd"].value)


def torchmetrics_fid_kid(real, fake, net, n: int) -> None:
    """FID and KID as torchmetrics computes them, extracting each image once: KID extracts and
    keeps the features, FID reads those (its own pass would be a second extraction)."""
    fid_cls = optional_import("torchmetrics.image.fid", "torchmetrics for the bench") \
        .FrechetInceptionDistance
    kid = optional_import("torchmetrics.image.kid", "torchmetrics for the bench") \
        .KernelInceptionDistance(feature=net, subsets=1, subset_size=n)
    kid.update(quantise(real), real=True)
    kid.update(quantise(fake), real=False)
    fid = fid_cls(feature=Given(torch.cat(kid.real_features), torch.cat(kid.fake_features)))
    for x, is_real in ((real, True), (fake, False)):
        fid.update(quantise(x), real=is_real)  # Given hands out the set's features
    assert torch.isfinite(fid.compute()) and torch.isfinite(kid.compute()[0])


def stage_metrics(args) -> dict:
    real_f, fake_f = synthetic_features(args.n, 0.0, 1), synthetic_features(args.n, 0.05, 2)
    dummy = torch.zeros(args.n, 1, 1, 1)
    runs = {
        "noiseshift": lambda: ours(dummy, dummy, lambda: Extractor(
            Given(real_f, fake_f), "given", batch_size=args.n), args.bootstrap),
        "torchmetrics": lambda: torchmetrics_fid_kid(dummy, dummy, Given(real_f, fake_f),
                                                     args.n)}
    return timed_side_by_side(runs, args.repeats)


def random_inception(folder: Path) -> Path:
    """torch-fidelity's FID Inception-v3 with its default (random) initialisation, saved
    where `--features inception:PATH` loads it."""
    from unittest import mock

    fe = optional_import("torch_fidelity.feature_extractor_inceptionv3",
                         "torch-fidelity for the bench")
    torch.manual_seed(0)
    cls = fe.FeatureExtractorInceptionV3
    with mock.patch.object(cls, "load_state_dict", lambda self, state: None), \
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None):
        net = cls("inception-v3-compat", ["2048"])
    path = folder / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


class Pool3(torch.nn.Module):
    """torch-fidelity's network as torchmetrics takes a ``feature`` module."""

    num_features = D

    def __init__(self, path: Path):
        super().__init__()
        fe = optional_import("torch_fidelity.feature_extractor_inceptionv3",
                             "torch-fidelity for the bench")
        self.net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))

    def forward(self, img):
        return self.net(img)[0]


def stage_extract(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    real = torch.rand((args.images, 3, 32, 32), generator=gen) * 2 - 1
    fake = (torch.rand((args.images, 3, 32, 32), generator=gen) * 2 - 1) * 0.9
    with tempfile.TemporaryDirectory() as tmp:
        path = random_inception(Path(tmp))
        ex, net = parse_features(f"inception:{path}"), Pool3(path)  # built once, untimed
        runs = {"noiseshift": lambda: ours(real, fake, lambda: ex, args.bootstrap),
                "torchmetrics": lambda: torchmetrics_fid_kid(real, fake, net, args.images)}
        return timed_side_by_side(runs, args.repeats)


def timed_side_by_side(runs: dict, repeats: int) -> dict:
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("metrics", "extract"), default="metrics")
    ap.add_argument("--n", type=int, default=10000, help="features per set (metrics)")
    ap.add_argument("--images", type=int, default=128, help="images per set (extract)")
    ap.add_argument("--bootstrap", type=int, default=N_BOOT, help="resamples per CI")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    times = (stage_metrics if args.stage == "metrics" else stage_extract)(args)
    for k, v in times.items():
        print(f"{k:13s} " + " ".join(f"{t:8.2f}" for t in v) + " s")
    a, b = times["noiseshift"], times["torchmetrics"]
    print(f"ratio noiseshift / torchmetrics: fastest {min(a) / min(b):.3f}, median "
          f"{statistics.median(a) / statistics.median(b):.3f}")


if __name__ == "__main__":
    main()
