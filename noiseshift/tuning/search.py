"""`tune`: successive halving over the candidates at a budget of model evaluations.

Every candidate draws ``n_start`` samples per seed; the best ``keep`` share by FD (at least
``finalists``) goes on to twice the samples, and so on until ``n_final``. The baseline (the
default sampler, unguided) is drawn at every rung, so each candidate's FD change is paired
against it at the same n. A candidate's table row holds the numbers of the last rung it
reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..analysis.quality import feature_space
from ..defaults import N_BOOT
from ..errors import NoiseshiftError
from ..guidance import low_dim_warning
from ..pretrained import independent_meter
from ..sampling import model_device
from .candidates import CANDIDATES, fitting
from .draws import Draws, draw, point_fd, score
from .result import Row, TuneResult

Progress = Callable[[str, int, int], None]

#: Rows per model call (fewer when n_start is smaller): the rung sizes are multiples of it,
#: so a rung's added samples meet the same batch-mates they would in one draw of n_final
#: (bit-identical samples).
BLOCK = 128


@dataclass
class Context:
    """What every draw shares."""

    model: object
    estimator: object
    data: object
    meter: object
    space: object
    n_total: int
    block: int
    device: str
    n_boot: int
    boot_seed: int
    #: draws a slice of a candidate's samples (`draws.draw`'s signature); None: `draws.draw`.
    #: A model that samples some other way (a diffusers pipeline) brings its own as
    #: ``model.tune_draw``.
    drawer: Callable | None = None


def rungs(k: int, n_start: int, n_final: int, keep: float, finalists: int
          ) -> list[tuple[int, int]]:
    """[(samples per seed, candidates drawn to it)] for ``k`` candidates besides the
    baseline: n doubles from n_start up to n_final; each rung keeps ceil(keep * count),
    at least ``finalists`` (and at most all)."""
    if not 0 < keep <= 1:
        raise NoiseshiftError(f"keep must be in (0, 1], got {keep}")
    if not 1 <= n_start <= n_final:
        raise NoiseshiftError(f"need 1 <= n_start <= n_final, got {n_start}, {n_final}")
    out, n, count = [(n_start, k)], n_start, k
    while n < n_final:
        n = min(2 * n, n_final)
        count = min(count, max(finalists, math.ceil(keep * count)))
        out.append((n, count))
    return out


def tune(model, budget_nfe: int, data, *, seeds=(0,), candidates=CANDIDATES,
         estimator=None, n_start: int = 128, n_final: int = 1024, keep: float = 1 / 3,
         finalists: int = 2, n_boot: int = N_BOOT, device="auto",
         progress: Progress | None = None, space=None, meter="auto") -> TuneResult:
    """Search ``candidates`` at ``budget_nfe`` model evaluations per sample on ``model``
    (a denoiser), scored on ``data`` (a `Dataset`): FD in the feature space `report` uses,
    precision/recall, and the shift by an independent meter. The first candidate is the
    baseline. ``estimator`` guides the estimator-based NAG modes (candidates that need one
    are left out without it). Returns every candidate's row and the recommendation."""
    clock = time.perf_counter()
    seeds = _seeds(seeds)
    pairs, notes = fitting(candidates, budget_nfe, model, has_estimator=estimator is not None)
    dim = getattr(data, "dim", None)
    if dim is not None and low_dim_warning(int(dim)) and any(c.nag_mode for c, _ in pairs):
        notes.append(low_dim_warning(int(dim)))
    if not pairs or pairs[0][0] is not candidates[0]:
        raise NoiseshiftError(f"the baseline {candidates[0].name!r} does not fit a budget of "
                              f"{budget_nfe} model evaluations")
    block = min(BLOCK, int(n_start))
    plan = rungs(len(pairs) - 1, _round(n_start, block), _round(n_final, block), keep,
                 finalists)
    ctx = _context(model, estimator, data, plan[-1][0], block, device, n_boot, space, meter)
    draws = {c.name: Draws(c, steps, seeds) for c, steps in pairs}
    rows = _halve(draws, plan, ctx, seeds, progress or (lambda *a: None))
    return TuneResult(rows=rows, budget=budget_nfe, seeds=seeds, plan=plan, notes=notes,
                      space=ctx.space.label, meter=getattr(ctx.meter, "name", None),
                      seconds=time.perf_counter() - clock,
                      samples=sum(d.samples for d in draws.values()),
                      model_evals=sum(d.rows for d in draws.values()))


def _seeds(seeds) -> tuple[int, ...]:
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise NoiseshiftError(f"seeds must be distinct and at least one, got {seeds}")
    return seeds


def _round(n: int, block: int) -> int:
    """n rounded up to whole blocks."""
    return max(1, math.ceil(int(n) / block)) * block


def _context(model, estimator, data, n_total, block, device, n_boot, space, meter
             ) -> Context:
    dev = model_device(model, device)
    if meter == "auto":
        meter = independent_meter(data, model.schedule, avoid="learned", device=str(dev))
    return Context(model, estimator, data, meter, space or feature_space(data), n_total,
                   block, str(dev), n_boot, 0, getattr(model, "tune_draw", None))


def _halve(draws: dict, plan, ctx: Context, seeds, progress: Progress) -> list[Row]:
    """Run the rungs; a candidate's row is scored at the last rung it reaches."""
    base, *alive = draws.values()
    total = len(seeds) * (plan[-1][0] + sum(
        count * (n - (plan[r - 1][0] if r else 0)) for r, (n, count) in enumerate(plan)))
    done = [0]
    rows: list[Row] = []
    for r, (n, _) in enumerate(plan):
        for d in [base, *alive]:
            _grow(d, n, ctx, seeds, done, total, progress, f"rung {r + 1}/{len(plan)}")
        if r + 1 < len(plan):
            ranked = sorted(alive, key=lambda d: point_fd(d, ctx))
            nxt = plan[r + 1][1]
            rows += [_row(d, base, ctx, r) for d in ranked[nxt:]]
            alive = ranked[:nxt]
    rows += [_row(d, base, ctx, len(plan) - 1) for d in [base, *alive]]
    return sorted(rows, key=lambda row: (-row.rung, row.fd.value))


def _grow(d: Draws, n: int, ctx: Context, seeds, done, total, progress, stage) -> None:
    """Draw ``d`` up to n samples per seed."""
    lo = d.n
    if lo >= n:
        return
    for seed in seeds:
        progress(f"{stage}: {d.candidate.name}, n = {n}", done[0], total)
        (ctx.drawer or draw)(d, ctx, seed, lo, n)
        done[0] += n - lo
    progress(f"{stage}: {d.candidate.name}, n = {n}", done[0], total)


def _row(d: Draws, base: Draws, ctx: Context, rung: int) -> Row:
    return Row(candidate=d.candidate, steps=d.steps, rung=rung, n=d.n * len(d.feats),
               **score(d, base, ctx))
