"""The two network bodies: a residual MLP for vectors and a small conv UNet for images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Denoiser


def _zero(module: nn.Module) -> nn.Module:
    # Zero-initialised output layers: the model starts at output 0, the target's mean.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class MLPDenoiser(Denoiser):
    """Residual MLP over the flattened input: config `width` (256) and `depth` (3)."""

    def __init__(self, config: dict):
        super().__init__(config)
        dim, width, emb = math.prod(self.shape), int(config["width"]), int(config["emb_dim"])
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_MLPBlock(width, emb) for _ in range(int(config["depth"])))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), _zero(nn.Linear(width, dim)))

    def _net(self, x, emb):
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)


class _MLPBlock(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.emb = nn.Linear(width, width), nn.Linear(emb, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(F.silu(emb))))


class UNetDenoiser(Denoiser):
    """A small conv UNet for (C, H, W): one residual block per level on the way down and
    up, GroupNorm + SiLU, stride-2 convs down, nearest-neighbour up. Config `channels`
    ([16, 32] gives about 96k parameters on 1x16x16)."""

    def __init__(self, config: dict):
        super().__init__(config)
        c_img, chans, emb = self.shape[0], [int(c) for c in config["channels"]], int(
            config["emb_dim"])
        self.inp = nn.Conv2d(c_img, chans[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(_ResBlock(prev, ch, emb))
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            prev = ch
        self.mid = _ResBlock(prev, prev, emb)
        self.up = nn.ModuleList()
        for i in reversed(range(len(chans))):
            self.up.append(_ResBlock(prev + chans[i], chans[i], emb))
            prev = chans[i]
        self.out = nn.Sequential(_norm(prev), nn.SiLU(), _zero(nn.Conv2d(prev, c_img, 3,
                                                                         padding=1)))

    def _net(self, x, emb):
        h, skips = self.inp(x), []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if i > 0:  # no conv after upsampling: the block's own convs follow at once
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch)  # 8 groups when they divide the channels


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h
