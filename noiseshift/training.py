"""One training loop for denoisers and estimators, and the denoising objective.

`train_loop` knows nothing about diffusion: it draws a batch with ``sample_batch(generator)``
(all randomness comes from one seeded CPU generator, so a seed gives the same run on any
device), takes an AdamW step on ``loss_fn(module, batch)``, keeps an EMA copy, reports
through ``on_step`` and writes a resumable checkpoint. `train_denoiser` supplies the
flow-matching / denoising objective.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .data import Dataset
from .defaults import DEFAULT_DENOISER, DEFAULT_SCHEDULE
from .errors import CheckpointError, NoiseshiftError
from .io.checkpoints import read_checkpoint, save_checkpoint
from .models import build_model, num_params
from .runtime import generator, resolve_device, seeded_init
from .schedules import Schedule, expand_like, get_schedule

STATE_FORMAT = "noiseshift.train_state"


# -- EMA ------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a module's weights, with the usual warm-up
    (decay min(decay, (1 + n) / (10 + n))) so early random weights fade fast."""

    def __init__(self, module: nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p, p = list(self.module.parameters()), list(module.parameters())
        torch._foreach_lerp_(ema_p, [q.detach() for q in p], 1.0 - d)
        for eb, b in zip(self.module.buffers(), module.buffers(), strict=True):
            eb.copy_(b)


# -- the loop -------------------------------------------------------------------------------

@dataclass
class TrainHistory:
    """What a run did. ``ema`` is the EMA copy of the module (None without EMA)."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    start_step: int = 0
    seconds: float = 0.0
    ema: nn.Module | None = None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least 1, at most 100)."""
        if not self.losses:
            return float("nan")
        k = max(1, min(100, len(self.losses) // 10))
        return float(sum(self.losses[-k:]) / k)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def train_loop(
    module: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor],
    sample_batch: Callable[[torch.Generator], object], *, steps: int, lr: float = 1e-3,
    weight_decay: float = 0.0, warmup: int | None = None, grad_clip: float | None = 1.0,
    ema_decay: float | None = 0.999, seed: int = 0, device="auto", checkpoint=None,
    checkpoint_every: int = 250, resume: bool = False, meta: dict | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> TrainHistory:
    """Train ``module`` in place for ``steps`` optimiser steps and return the history.

    - ``sample_batch(generator)`` returns a batch (tensors, or tuples / dicts of them) drawn
      from the CPU generator; the loop moves it to the device.
    - ``loss_fn(module, batch)`` returns a scalar loss.
    - AdamW with ``lr``, linear warm-up over ``warmup`` steps (default 5% of steps) and cosine
      decay to lr/10; gradient-norm clipping at ``grad_clip``.
    - ``ema_decay``: keep an EMA copy (``history.ema``); None turns it off.
    - ``checkpoint``: a path for a resumable training state (weights, optimiser, EMA, step,
      generator state and losses, loadable with ``weights_only=True``), written every
      ``checkpoint_every`` steps and at the end. With ``resume`` and an existing file, the
      run continues from it and ends exactly where an uninterrupted run would; without the
      file it starts fresh. ``meta`` (JSON-able, e.g. the model config) must match on resume.
    - ``on_step(info)`` is called after every step with info = {"step", "steps", "loss"}.
    - A non-finite loss stops the run with a NoiseshiftError before that step's checkpoint.

    Under torchrun (DistributedDataParallel) every rank draws the same global batch and
    trains on its own shard of it (`_my_share`): a single-process step on the global batch.
    Rank 0 alone writes the checkpoint and calls ``on_step``.
    """
    dev = distributed.device_for(device)
    net = _ddp(module.to(dev).train(), dev)
    gen = generator(seed)
    # foreach: one fused update over all tensors, not a Python loop per parameter.
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    ema = EMA(module, ema_decay) if ema_decay else None
    hist = TrainHistory(ema=None if ema is None else ema.module)
    meta_json = json.dumps(meta or {}, sort_keys=True)
    if resume and checkpoint is not None and Path(checkpoint).exists():
        hist.start_step = _restore(checkpoint, module, opt, ema, gen, hist, meta_json, dev)
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    t0 = time.perf_counter()
    for step in range(hist.start_step, steps):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup)
        batch, share = _my_share(sample_batch(gen))
        loss = loss_fn(net, _to(batch, dev)) * share
        hist.losses.append(distributed.mean(_optimizer_step(module, opt, ema, loss, grad_clip)))
        if not math.isfinite(hist.losses[-1]):  # every rank sees the same mean: all stop
            raise NoiseshiftError(f"the training loss is {hist.losses[-1]} at step {step + 1}: "
                                  f"data too large or --lr too high; the model is not saved")
        if distributed.is_main():  # progress and checkpoints: rank 0's job
            done = step + 1
            if on_step is not None:
                on_step({"step": done, "steps": steps, "loss": hist.losses[-1]})
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                _save_state(checkpoint, done, module, opt, ema, gen, hist, meta_json)
    hist.steps = max(steps, hist.start_step)
    hist.seconds = time.perf_counter() - t0
    module.eval()
    return hist


class _DDP(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that answers for the module's own attributes (``schedule``,
    ``prediction``, ``loss_scale`` ...), so a loss function takes either."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _ddp(module: nn.Module, dev: torch.device) -> nn.Module:
    """``module`` wrapped for data parallelism under torchrun; itself otherwise."""
    if not distributed.active():
        return module
    ids = [dev.index] if dev.type == "cuda" else None
    # Unused parameters happen (a null-t token without t-dropout): let DDP find them.
    return _DDP(module, device_ids=ids, find_unused_parameters=True)


def _rows(batch) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else None
    items = batch.values() if isinstance(batch, dict) else (
        batch if isinstance(batch, (tuple, list)) else ())
    return next((r for r in map(_rows, items) if r is not None), None)


def _cut(batch, rows: int, sl: range):
    if isinstance(batch, torch.Tensor):
        return batch[sl.start:sl.stop] if batch.ndim and batch.shape[0] == rows else batch
    if isinstance(batch, dict):
        return {k: _cut(v, rows, sl) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cut(v, rows, sl) for v in batch)
    return batch


def _my_share(batch):
    """(this rank's contiguous shard of a global batch, its loss weight len * ws / B), so
    that DDP's mean of the ranks' gradients is the global batch's gradient; (batch, 1.0)
    without torchrun."""
    rank, ws = distributed.world()
    rows = _rows(batch)
    if ws == 1 or not rows:
        return batch, 1.0
    sl = distributed.shard(rows, rank, ws)
    if not len(sl):
        raise NoiseshiftError(f"a global batch of {rows} cannot be split over {ws} ranks; "
                              f"use --batch-size of at least {ws}")
    return _cut(batch, rows, sl), len(sl) * ws / rows


def _optimizer_step(module: nn.Module, opt, ema: EMA | None, loss: torch.Tensor,
                    grad_clip: float | None) -> float:
    """Backward, clip, step, then the EMA follows; returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()
    if ema is not None:
        ema.update(module)
    return float(loss.detach())


def _to(batch, dev):
    if isinstance(batch, torch.Tensor):
        return batch.to(dev, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, dev) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, dev) for v in batch)
    return batch


def _save_state(path, step, module, opt, ema, gen, hist, meta_json) -> None:
    save_checkpoint(path, STATE_FORMAT, {
        "step": step,
        "module": module.state_dict(),
        "optimizer": opt.state_dict(),
        "ema": None if ema is None else ema.module.state_dict(),
        "ema_updates": 0 if ema is None else ema.updates,
        "rng": gen.get_state(),
        "losses": torch.tensor(hist.losses, dtype=torch.float64),
        "meta": meta_json,
    })


def _restore(path, module, opt, ema, gen, hist, meta_json, dev) -> int:
    state = read_checkpoint(path, STATE_FORMAT, device=dev)
    if state.get("meta") != meta_json:
        raise CheckpointError("saved training state is for different settings "
                              f"({state.get('meta')}); delete it or match them", path)
    try:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
            ema.updates = int(state["ema_updates"])
        gen.set_state(state["rng"].cpu())
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"damaged training state ({type(e).__name__}: {e})", path) from e
    hist.losses = state["losses"].tolist()
    return int(state["step"])


# -- denoisers ------------------------------------------------------------------------------

def denoiser_config(data: Dataset, schedule, *, arch: str = "auto",
                    prediction: str = DEFAULT_DENOISER["prediction"],
                    t_dropout: float = DEFAULT_DENOISER["t_dropout"],
                    class_dropout: float = DEFAULT_DENOISER["class_dropout"],
                    conditional: bool = True, **arch_options) -> dict:
    """The model config `train_denoiser` builds for ``data``."""
    if arch == "auto":
        arch = "unet" if len(data.shape) == 3 else "mlp"
    num_classes = data.num_classes if conditional and data.labels is not None else 0
    return {
        "kind": arch, "shape": list(data.shape), "schedule": get_schedule(schedule).to_dict(),
        "prediction": prediction, "num_classes": int(num_classes),
        "t_dropout": float(t_dropout), "class_dropout": float(class_dropout if num_classes else 0),
        # Per-dimension second moment of the data, for the preconditioning.
        "data_m2": float(data.x.double().pow(2).mean()),
        "data": data.spec,
        **{k: v for k, v in arch_options.items() if v is not None},
    }


def denoising_loss(model, x0, t, eps, y=None, drop_t=None, drop_y=None) -> torch.Tensor:
    """MSE to the target in the model's parametrisation at x_t = alpha x0 + sigma eps,
    each row's error divided by `model.loss_scale` (EDM's weighting: the network's own
    residual has unit scale at every t; under the linear schedule with velocity this is
    close to the plain rectified-flow loss)."""
    sch: Schedule = model.schedule
    xt = sch.add_noise(x0, eps, t)
    target = sch.from_x0_eps(x0, eps, model.prediction, xt, t)
    out = model(xt, t, y=y, drop_t=drop_t, drop_y=drop_y)
    scale = expand_like(model.loss_scale(t, drop_t), out).to(out.dtype)
    return ((out - target) / scale).flatten(1).pow(2).mean(1).mean()


def _denoising_task(data: Dataset, x: torch.Tensor, labels: torch.Tensor | None,
                    batch_size: int, t_dropout: float, class_dropout: float):
    """(sample_batch, loss_fn) for `train_loop`: rows of ``x`` (on the device) at
    t ~ U[1e-5, 1] with fresh noise, and the dropout masks; ``labels`` None trains
    unconditionally."""

    def sample_batch(gen):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        t = torch.rand(batch_size, generator=gen, dtype=torch.float64).clamp(1e-5, 1.0)
        eps = torch.randn(batch_size, *data.shape, generator=gen)
        drop_t = torch.rand(batch_size, generator=gen) < t_dropout
        drop_y = torch.rand(batch_size, generator=gen) < class_dropout
        return idx, t, eps, drop_t, drop_y

    def loss_fn(model, batch):
        idx, t, eps, drop_t, drop_y = batch
        y = None if labels is None else labels[idx]
        return denoising_loss(model, x[idx], t, eps, y, drop_t if t_dropout else None,
                              drop_y if labels is not None else None)

    return sample_batch, loss_fn


def train_denoiser(
    data: Dataset, schedule=DEFAULT_SCHEDULE, *, arch: str = "auto",
    channels: list[int] | None = None, width: int | None = None, depth: int | None = None,
    steps: int = DEFAULT_DENOISER["steps"], batch_size: int = DEFAULT_DENOISER["batch_size"],
    lr: float = DEFAULT_DENOISER["lr"], t_dropout: float = DEFAULT_DENOISER["t_dropout"],
    class_dropout: float = DEFAULT_DENOISER["class_dropout"],
    prediction: str = DEFAULT_DENOISER["prediction"], conditional: bool = True,
    ema_decay: float | None = DEFAULT_DENOISER["ema_decay"], seed: int = DEFAULT_DENOISER["seed"],
    device="auto", checkpoint=None, checkpoint_every: int = 250, resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
):
    """Train a denoiser on ``data`` under ``schedule`` and return it (EMA weights, eval mode).

    The objective: t ~ U[0, 1], x_t = alpha(t) x0 + sigma(t) eps, the target in the model's
    ``prediction`` (velocity d_alpha x0 + d_sigma eps by default). A fraction ``t_dropout``
    of rows sees the learned null-t token instead of t (noise-condition dropout, needed by
    classifier-free NAG) and ``class_dropout`` the null-class token (needed by CFG).
    ``arch`` "auto" picks the UNet for images and the MLP for vectors; ``conditional``
    uses the data's labels when it has them. The training settings default to the built-in
    recipe's (`defaults.DEFAULT_DENOISER`); AdamW with cosine decay, and ``ema_decay`` None
    turns the EMA off. ``model.info`` holds the training summary.
    """
    dev = resolve_device(device)
    config = denoiser_config(data, schedule, arch=arch, prediction=prediction,
                             t_dropout=t_dropout, class_dropout=class_dropout,
                             conditional=conditional, channels=channels, width=width,
                             depth=depth)
    model = seeded_init(seed, build_model, config)
    labels = data.labels.to(dev) if config["num_classes"] else None
    sample_batch, loss_fn = _denoising_task(data, data.x.to(dev), labels, batch_size,
                                            t_dropout, class_dropout)
    settings = {"batch_size": batch_size, "lr": lr, "seed": seed, "ema_decay": ema_decay}
    hist = train_loop(model, loss_fn, sample_batch, steps=steps, lr=lr, ema_decay=ema_decay,
                      seed=seed, device=dev, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, resume=resume,
                      meta={"config": config, **settings}, on_step=on_step)
    out = hist.ema if hist.ema is not None else model
    out.info = {"steps": hist.steps, **settings, "final_loss": hist.final_loss,
                "seconds": round(hist.seconds, 2), "params": num_params(out)}
    return out.eval()
