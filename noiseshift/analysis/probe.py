"""The t-trust probe: does a model read its noise level from its t input or from x?

Classifier-free NAG corrects with the difference between a model's conditional branch and its
null-t branch. On directions that hold only noise both responses are known for the ideal
denoiser, so feeding states truly noised to t' while telling the model t shows how much of
that correcting signal a trained model actually has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import NoiseshiftError
from ..guidance import DEFAULT_NAG_MODE
from ..schedules import Schedule, get_schedule


@dataclass
class ProbeResult:
    """Response gains of the branches on noise-only directions, one row per (t, rho)."""

    rows: list[dict]
    verdict: str
    trusts_t: float  # measured CF-NAG signal as a fraction of the ideal (1 = fully trusts t)
    directions: str
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "verdict": self.verdict, "trusts_t": self.trusts_t,
                "directions": self.directions, **self.info}


def noise_directions(data, max_dirs: int = 256):
    """An orthonormal basis (D, m) of directions holding (almost) no data, and the data's
    per-direction variance there.

    The data's known subspace gives its exact complement; otherwise the directions (of an
    uncentred SVD) with numerically zero energy; failing that, the quietest half of them,
    where the data's small energy c2 enters the ideal responses.
    """
    x = data.x.reshape(len(data), -1).double()
    d = x.shape[1]
    if data.subspace is not None:
        q = data.subspace.double()
        vals, vecs = torch.linalg.eigh(torch.eye(d, dtype=torch.float64) - q @ q.T)
        basis, kind = vecs[:, vals > 0.5], "complement of the data subspace"
    else:
        # Uncentred: the data mean is data too, and must not count as a noise direction.
        _, s, vh = torch.linalg.svd(x, full_matrices=True)
        energy = torch.zeros(d, dtype=torch.float64)
        energy[: s.numel()] = s**2 / x.shape[0]
        empty = energy <= 1e-10 * energy.max()
        if bool(empty.any()):
            basis, kind = vh[empty].T, "complement of the data span"
        else:
            basis, kind = vh[d - d // 2:].T, "quietest half of the principal directions"
    basis = basis[:, :max_dirs]
    return basis, float((x @ basis).pow(2).mean()), kind


def _linear_response(schedule: Schedule, prediction: str, t: float, c2: float) -> float:
    """Output per unit of x of the ideal denoiser at noise level t along a direction where
    the data have second moment c2: x0 = alpha c2 / v x, eps = sigma / v x, v = alpha^2 c2 +
    sigma^2."""
    t = torch.tensor([float(t)], dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    v = a**2 * c2 + s**2
    unit = torch.ones_like(t)
    return float(schedule.from_x0_eps(a * c2 / v, s / v, prediction, unit, t))


def probe(model, data, schedule=None, rhos=(0.1, 0.2, 0.3), ts=(0.2, 0.4, 0.6, 0.8),
          n: int = 256, seed: int = 0, device=None) -> ProbeResult:
    """Does ``model`` read its noise level from its t input or from x?

    States are truly noised to t' = t (1 + rho) while the model is told t. On noise-only
    directions P, the gain of a branch is <P out, P x> / (r(t) |P x|^2), where r(t) is the
    response of the ideal denoiser at t: a model that trusts t has conditional gain 1, and an
    exact null-t branch (which can only read x) has gain r(t')/r(t) (= t/t' for velocity or eps
    under the linear schedule). Classifier-free NAG's correcting signal is proportional to
    the difference of the two gains, so its ideal is 1 - r(t')/r(t).
    """
    schedule = get_schedule(schedule or model.schedule)
    if model.prediction == "x0":
        raise NoiseshiftError("an x0-predicting model has no response on noise-only "
                              "directions; the probe needs velocity, eps or score")
    device = torch.device(device) if device else next(
        (p.device for p in getattr(model, "parameters", lambda: iter(()))()),
        torch.device("cpu"))
    basis, c2, kind = noise_directions(data)
    basis = basis.to(device)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data), (n,), generator=g)
    x0 = data.x[idx].double()
    y = None
    if model.num_classes and data.labels is not None:
        y = data.labels[idx].clamp(max=model.num_classes - 1).to(device)
    null = bool(model.supports_null_t)
    rows = []
    for t in ts:
        for rho in rhos:
            tp = min(1.0, t * (1 + rho))
            eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            x = schedule.add_noise(x0, eps, tp).float()
            rows.append(_probe_cell(model, schedule, x.to(device), y, t, tp, rho, basis, c2,
                                    null))
    return _verdict(rows, kind, c2, null)


def _probe_cell(model, schedule, x, y, t, tp, rho, basis, c2, null):
    n = x.shape[0]
    reps = 2 if null else 1
    tt = torch.full((reps * n,), float(t), dtype=torch.float64, device=x.device)
    drop_t = torch.arange(reps * n, device=x.device) >= n
    yy = None if y is None else y.repeat(reps)
    with torch.no_grad():
        out = model(x.repeat(reps, *([1] * (x.ndim - 1))), tt, yy, drop_t, None)
    px = x.reshape(n, -1).double() @ basis
    po = out.reshape(reps * n, -1).double() @ basis
    r_t = _linear_response(schedule, model.prediction, t, c2)
    r_tp = _linear_response(schedule, model.prediction, tp, c2)
    denom = r_t * float((px * px).sum())
    gains = [float((po[k * n:(k + 1) * n] * px).sum()) / denom for k in range(reps)]
    ideal_null = r_tp / r_t
    row = {"t": float(t), "rho": float(rho), "t_true": tp, "gain_cond": gains[0],
           "ideal_null": ideal_null, "ideal_signal": 1.0 - ideal_null}
    if null:
        row.update(gain_null=gains[1], signal=gains[0] - gains[1])
    return row


def _signal_fraction(rows, null) -> float:
    """Measured CF-NAG signal over the ideal one, pooled over rows. Without a null-t branch
    the conditional gain is placed between the two pure cases, 1 (trusts t) and an
    x-reader's gain."""
    ideal = sum(r["ideal_signal"] for r in rows)
    got = sum(r["signal"] if null else r["gain_cond"] - r["ideal_null"] for r in rows)
    return got / ideal


def _verdict(rows, kind, c2, null) -> ProbeResult:
    frac = _signal_fraction(rows, null)
    by_t = {t: _signal_fraction([r for r in rows if r["t"] == t], null)
            for t in sorted({r["t"] for r in rows})}
    pct = f"{100 * frac:.0f}%"
    if frac < 0.25:
        verdict = ("this model reads its noise level from x, not from t: classifier-free NAG "
                   f"will have little to correct with ({pct} of the ideal signal); use "
                   f"an estimator-based mode (--nag-mode {DEFAULT_NAG_MODE}, the default)")
    elif frac < 0.6:
        verdict = (f"this model partly trusts its t input: classifier-free NAG gets {pct} of "
                   "the ideal correcting signal")
    else:
        verdict = ("this model trusts its t input: classifier-free NAG has a correcting signal "
                   f"to work with ({pct} of the ideal)")
    if len(by_t) > 1:
        verdict += " (by t: " + ", ".join(f"{t:g}: {100 * f:.0f}%" for t, f in by_t.items()) + ")"
    if not null:
        verdict += " (no null-t branch: measured on the conditional branch alone)"
    return ProbeResult(rows, verdict, frac, kind,
                       {"data_c2": c2, "null_t": null,
                        "trusts_t_by_t": {f"{t:g}": f for t, f in by_t.items()}})


def branch_gap(model, data, states, seed: int = 0) -> list[dict]:
    """The classifier-free NAG term d = out(x|t) - out(x|null t) on a sampler's states and on
    true x_t of the data at the same t, one row per (t, source).

    ``states``: (t, x, y) triples, sampler states x at scheduled t with their labels (or
    None). On a true x_t the exact null-t branch agrees with the conditional one (its
    posterior over t is narrow there), so the ideal d is 0 and whatever a trained model
    gives there is the floor: what cf adds where there is nothing to correct. Row keys:
    ``rel`` |d| / |out(x|t)| (RMS over the batch, in the model's parametrisation);
    ``eps_rms`` d in eps units, RMS per coordinate; ``cos_pred`` mean cosine of d (eps
    units) with the conditional branch's predicted noise, > 0 where cf removes noise;
    ``cos_true`` the same with the true noise (true states only); ``noise_frac`` the share
    of d's energy on noise-only directions (`noise_directions`), beside ``noise_dims``, that
    share for a direction drawn at random.
    """
    if not model.supports_null_t:
        raise NoiseshiftError("the model has no null-t branch (train it with --t-dropout)")
    basis, _, _ = noise_directions(data)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t, x, y in states:
        n = x.shape[0]
        idx = torch.randint(len(data), (n,), generator=g)
        eps = torch.randn((n, *data.x.shape[1:]), generator=g, dtype=torch.float64)
        true_x = model.schedule.add_noise(data.x[idx].double(), eps, float(t)).float()
        true_y = None
        if model.num_classes and data.labels is not None:
            true_y = data.labels[idx].clamp(max=model.num_classes - 1).to(x.device)
        for source, xx, yy, noise in (("sampler", x, y, None),
                                      ("true", true_x.to(x.device), true_y, eps)):
            rows.append({"t": float(t), "source": source,
                         **_gap_stats(model, xx, float(t), yy, noise, basis.to(x.device))})
    return rows


def _gap_stats(model, x, t, y, noise, basis) -> dict:
    n = x.shape[0]
    tt = torch.full((2 * n,), t, dtype=torch.float64, device=x.device)
    drop_t = torch.arange(2 * n, device=x.device) >= n
    yy = None if y is None else y.repeat(2)
    with torch.no_grad():
        out = model(x.repeat(2, *([1] * (x.ndim - 1))), tt, yy, drop_t, None).double()
    eps = model.schedule.convert(out, model.prediction, "eps", x.double().repeat(
        2, *([1] * (x.ndim - 1))), tt).reshape(2 * n, -1)
    d, pred = eps[:n] - eps[n:], eps[:n]
    gap = (out[:n] - out[n:]).reshape(n, -1)
    cos = torch.nn.functional.cosine_similarity
    row = {"n": n, "rel": float(gap.norm() / out[:n].norm()),
           "eps_rms": float(d.pow(2).mean().sqrt()),
           "cos_pred": float(cos(d, pred, dim=1).mean()),
           "noise_frac": float((d @ basis).pow(2).sum() / d.pow(2).sum()),
           "noise_dims": basis.shape[1] / d.shape[1]}
    if noise is not None:
        row["cos_true"] = float(cos(d, noise.reshape(n, -1).to(d), dim=1).mean())
    return row


__all__ = ["ProbeResult", "branch_gap", "noise_directions", "probe"]
