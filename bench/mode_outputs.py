"""Guided outputs of every NAG mode on a tiny model, saved or compared bit for bit.

A refactor of the guidance code must not change any guided number. Run once before the
change with ``--save``, once after with ``--compare``:

    python bench/mode_outputs.py --save /tmp/modes-before.pt
    python bench/mode_outputs.py --compare /tmp/modes-before.pt

Each case (every mode, with and without CFG, and with an interval and eps scaling) is one
forward pass at rows spread over t in [0, 1] (with CFG, also on 360 rows, more than one
model call holds), one 4-step Euler-Maruyama run and the
guidance dict (as JSON), on a UNet (with null-t and null-class tokens) and a learned
estimator, both trained for a few steps on smooth random fields.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from noiseshift.data import Dataset
from noiseshift.estimators import LearnedEstimator
from noiseshift.guidance import MODES, ClassifierFreeGuidance, build_guidance
from noiseshift.sampling import sample
from noiseshift.schedules import get_schedule
from noiseshift.training import train_denoiser

SHAPE = (1, 16, 16)
T_ROWS = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.79, 0.8, 0.85, 0.95, 1.0], dtype=torch.float64)


def fields(n: int = 256, seed: int = 0) -> Dataset:
    """Smooth random fields with random labels: data both tiny networks learn in seconds."""
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(torch.randn(n, *SHAPE[:1], 4, 4, generator=g), size=SHAPE[1:],
                      mode="bilinear", align_corners=False)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Dataset(x=(z / z.std()).contiguous(), labels=labels, spec={"name": "fields"},
                   num_classes=10)


def tiny_model():
    return train_denoiser(fields(), "linear", channels=[16, 32], steps=150, batch_size=32,
                          ema_decay=None, device="cpu")


def tiny_estimator():
    return LearnedEstimator(bins=20, steps=60, train_batch=32, calib_points=10,
                            calib_samples=16, device="cpu").fit(fields(), "linear")


def states() -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy fields at levels a little above T_ROWS (where NAG has something to correct)."""
    g = torch.Generator().manual_seed(1)
    x0 = fields(len(T_ROWS), seed=1).x.double()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    level = (1.1 * T_ROWS).clamp(max=1.0)
    return get_schedule("linear").add_noise(x0, eps, level).float(), T_ROWS.float()


def cases():
    """(name, build_guidance keywords) for every mode and combination."""
    for mode in MODES:
        yield f"{mode}", dict(nag_scale=1.5, nag_mode=mode)
        yield f"{mode}+cfg", dict(nag_scale=1.5, nag_mode=mode, cfg_scale=2.0)
        yield f"{mode}@interval+eps", dict(nag_scale=0.7, nag_mode=mode, interval=(0.1, 0.9),
                                           eps_scale=(1.004, 0.01))


def outputs(model, estimator) -> dict:
    x, t = states()
    g = torch.Generator().manual_seed(2)
    y = torch.arange(len(T_ROWS)) % 10
    out = {}
    for name, kw in cases():
        guided, desc = build_guidance(model, estimator=estimator, **kw)
        out[f"{name}/describe"] = json.dumps(desc)
        with torch.no_grad():
            out[f"{name}/forward"] = guided(x, t, y)
        out[f"{name}/sample"] = sample(guided, 6, sampler="euler-maruyama", steps=4, seed=3,
                                       y=torch.arange(6) % 10)
        if "+cfg" in name and isinstance(guided, ClassifierFreeGuidance):
            # Enough rows that the stacked branches outgrow one model call.
            big = x.repeat(40, 1, 1, 1) + 0.01 * torch.randn(360, *SHAPE, generator=g)
            with torch.no_grad():
                out[f"{name}/forward-360"] = guided(big, t.repeat(40), y.repeat(40))
    return out


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save")
    group.add_argument("--compare")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    got = outputs(tiny_model(), tiny_estimator())
    if args.save:
        torch.save(got, args.save)
        print(f"saved {len(got)} outputs to {args.save}")
        return 0
    want = torch.load(args.compare)
    bad = [k for k in want if k not in got or not _same(want[k], got[k])]
    new = [k for k in got if k not in want]
    print(f"{len(want) - len(bad)}/{len(want)} equal" + (f"; differ: {bad}" if bad else "")
          + (f"; not saved before: {new}" if new else ""))
    bad += new
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
