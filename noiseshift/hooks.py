"""Step hooks: how sampler-side corrections reach a sampler's ``step_hook`` (sampling.py).

A correction of the state after each update (DCW, a Langevin corrector) is a guidance
wrapper with ``sampler_hook(blocked, y, noise) -> hook``; `model_hooks` gathers those of a
wrapper chain, and `chain_hooks` runs several as one.
"""

from __future__ import annotations

import torch


def model_hooks(model, blocked, y, noise, step_hook=None):
    """One step hook from ``step_hook`` and every wrapper in ``model``'s chain (through
    ``.model``) that has ``sampler_hook(blocked, y, noise) -> hook``: a correction built as
    a wrapper (a corrector step) reaches the sampler however the model is passed on. Inner
    wrappers' hooks run first, the caller's last; None when there are none."""
    hooks, m = [], model
    while m is not None:
        if callable(getattr(type(m), "sampler_hook", None)):
            hooks.insert(0, m.sampler_hook(blocked, y, noise))
        m = getattr(m, "model", None) if isinstance(m, torch.nn.Module) else None
    return chain_hooks([*hooks, step_hook])


def chain_hooks(hooks):
    """One step hook running ``hooks`` in order (None entries skipped), each on the state
    the one before returned; None when there are none."""
    hooks = [h for h in hooks if h is not None]
    if len(hooks) <= 1:
        return hooks[0] if hooks else None

    def hook(info):
        for h in hooks:
            info = {**info, "x_next": h(info)}
        return info["x_next"]

    return hook
