"""Classifier-free guidance on both axes: CFG on the class, NAG on the noise level.

``v(x|t,c) + w_cfg [v(x|t,c) - v(x|t,0c)] + w_nag [v(x|t,c) - v(x|0t,c)]`` (NAG: Zhong et
al., 2025), all branches stacked into batched forward calls of at most `BRANCH_BLOCK` rows.
With ``read=estimator`` the NAG branch is turned into a score at the estimator's reading t'
of the state instead of at the scheduled t (``cf-read``); with ``control=True`` that branch
is the *conditional* output read at t' (``cf-read-control``). ``calibrated=True`` converts
it at the calibrated level t-hat (the reading through the inverse of the estimator's
reference curve) and ``cap`` bounds the score -> velocity factor (``cf-calibrated``,
``cf-calibrated-control``): the velocity change is
``-w min(t/(1-t), cap) (s_c(x|t) - s_u(x|t-hat))`` under the linear schedule.
"""

from __future__ import annotations

import torch

from ..errors import NoiseshiftError
from ..sampling import Blocked
from ..schedules import expand_like
from .base import (
    FULL_INTERVAL,
    UNCAPPED_INTERVAL,
    Guided,
    _cap,
    _in_interval,
    _index,
    _interval,
    _mask,
    _regular,
    _rows,
    _take,
    capped,
)
from .estimator import calibrated_t, read_t

# The stacked branches go through the model in calls of at most this many rows. A forward
# pass costs more than linearly in rows once its activations outgrow the core's cache: the
# default UNet (1x16x16, channels [16, 32]) on CPU, one thread, cost 2.8x its 512-row pass
# on 1024 rows and 4.1x on 1536 (CFG + classifier-free NAG at n = 512), and 1.9x and 2.8x
# in calls of 256 rows; outputs are bit-identical either way. 256 is also the sampler's
# block (`sampling.SAMPLE_BLOCK`), so under `sample` the conditional branch runs on
# exactly the unguided call's rows. Measured by bench/bench_guidance.py (cost).
BRANCH_BLOCK = 256

NO_NULL_T = (
    "this model was trained without noise-condition dropout, so it has no null-t branch for "
    "--nag-mode {mode}: train one with `noiseshift train --t-dropout 0.3`, or use "
    "--nag-mode estimator-step (the default), which needs no retraining"
)


class ClassifierFreeGuidance(Guided):
    """``out(x|t,c) + w_cfg [out(x|t,c) - out(x|t,0c)] + w_nag [out(x|t,c) - out(x|0t,c)]``.

    All branches go through the wrapped model stacked, in calls of at most `BRANCH_BLOCK`
    rows; rows outside a term's interval (or already dropped by the caller) skip that term
    and its extra forward rows.
    Without ``read`` the terms mix network outputs as published. With ``read`` (an estimator)
    the NAG term mixes in score space, its branch converted at the estimator's reading t' of x
    rather than at t; ``control=True`` uses the conditional output there, with no
    null-t branch, to show where the correcting signal comes from.
    """

    def __init__(self, model, *, cfg_scale: float = 0.0, nag_scale: float = 0.0,
                 cfg_interval=None, nag_interval=None, read=None, control: bool = False,
                 calibrated: bool = False, cap: float | None = None):
        super().__init__(model)
        self.cfg_scale, self.nag_scale = float(cfg_scale), float(nag_scale)
        self.cfg_interval = _interval(cfg_interval, FULL_INTERVAL)
        self.nag_interval = _interval(nag_interval, UNCAPPED_INTERVAL)
        self.read, self.control = read, bool(control)
        self.calibrated, self.cap = bool(calibrated), _cap(cap)
        if (control or calibrated) and read is None:
            raise NoiseshiftError("the cf-read and cf-calibrated modes need an estimator to "
                                  "read t'")
        if self.cfg_scale and not model.num_classes:
            raise NoiseshiftError("--cfg-scale needs a class-conditional model; this one has "
                                  "no classes")
        if self.nag_scale and not control and not model.supports_null_t:
            raise NoiseshiftError(NO_NULL_T.format(mode=self.mode))

    @property
    def mode(self) -> str:
        if self.read is None:
            return "cf"
        base = "cf-calibrated" if self.calibrated else "cf-read"
        return f"{base}-control" if self.control else base

    def describe(self) -> dict:
        out = {}
        if self.cfg_scale:
            out["cfg"] = {"scale": self.cfg_scale, "interval": list(self.cfg_interval)}
        if self.nag_scale:
            out["nag"] = {"scale": self.nag_scale, "mode": self.mode,
                          "interval": list(self.nag_interval)}
            if self.cap is not None:
                out["nag"]["cap"] = self.cap
        return out

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        n = x.shape[0]
        t = _rows(t, x)
        y = _take(y, n, x.device)
        dt, dy = _mask(drop_t, n, x.device), _mask(drop_y, n, x.device)
        nag_rows = _in_interval(t, self.nag_interval) & ~dt
        if self.read is not None:  # mixes in score space
            nag_rows &= _regular(self.schedule, t)
        w_nag = self.nag_scale * nag_rows
        w_cfg = self.cfg_scale * (_in_interval(t, self.cfg_interval) & ~dy)
        i_nag = (w_nag != 0).nonzero().squeeze(1)
        i_cfg = (w_cfg != 0).nonzero().squeeze(1)
        if i_nag.numel() == 0 and i_cfg.numel() == 0:
            return self.model(x, t, y, drop_t, drop_y)
        if self.cfg_scale and y is None:
            raise NoiseshiftError("classifier-free guidance needs class labels y")
        null_t_rows = i_nag if self.read is None or not self.control else i_nag[:0]
        idx = torch.cat([torch.arange(n, device=x.device), null_t_rows, i_cfg])
        ones = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
        k_nag = null_t_rows.numel()
        bt = torch.cat([dt, ones[:k_nag], dt[i_cfg]])
        by = torch.cat([dy, dy[null_t_rows], ones[:i_cfg.numel()]])
        out = Blocked(self.model, BRANCH_BLOCK)(x[idx], t[idx], _index(y, idx), drop_t=bt,
                                                drop_y=by)
        cond, nul_t, nul_c = out[:n], out[n:n + k_nag], out[n + k_nag:]
        if self.read is None:
            return self._mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag, i_cfg)
        out = self._mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag[:0], i_cfg)
        return self._read_nag(x, t, out, cond, nul_t, w_nag, i_nag)

    @staticmethod
    def _mix(cond, nul_t, nul_c, w_nag, w_cfg, i_nag, i_cfg):
        out = cond.clone()
        if i_cfg.numel():
            out[i_cfg] += expand_like(w_cfg[i_cfg], cond) * (cond[i_cfg] - nul_c)
        if i_nag.numel():
            out[i_nag] += expand_like(w_nag[i_nag], cond) * (cond[i_nag] - nul_t)
        return out

    def _read_nag(self, x, t, out, cond, nul_t, w_nag, i):
        """The NAG term in score space, its branch read at t' (CFG, if any, is in `out`)."""
        if not i.numel():
            return out
        xi, ti, p = x[i], t[i], self.prediction
        s = self.convert(out[i], p, "score", xi, ti)
        s_c = self.convert(cond[i], p, "score", xi, ti)
        branch = cond[i] if self.control else nul_t
        t_read = calibrated_t(self.read, xi) if self.calibrated else read_t(self.read, xi)
        s_r = self.convert(branch, p, "score", xi, t_read)
        w = w_nag[i].double()
        if self.cap is not None:
            w = w * capped(self.schedule, ti, self.cap)
        s = s + expand_like(w, s) * (s_c - s_r)
        out = out.clone()
        out[i] = self.convert(s, "score", p, xi, ti).to(out.dtype)
        return out
