"""`tune`: a race at a budget of model evaluations.

The baseline (the default sampler, unguided) draws ``n_final`` samples per seed and every
other candidate ``n_start``. Then, while the budget (``share`` of what drawing every
candidate to n_final costs) allows, candidates are drawn to n_final while some estimate of
FD at n_final reaches below the FD of what would be recommended (the best candidate at
n_final whose change against the baseline, paired, is resolved below zero): first the
lowest of the estimates below it, then the lowest lower bound of a CI that reaches below
it. The second kind is how a family the finalists pair loosely with gets a finalist: an ODE
solver estimated through the stochastic baseline is noise of several FD units (+-3 at 64
samples on the default model), and once one of the family is drawn its kin are estimated
through it to +-0.1.

Why not rank by FD at n_start: at 64 to 256 samples of 64-d features FD is biased by more
than the candidates differ (+12 at 128 samples on the default model, against gaps of 0.5
at 1024) and by a different amount per candidate. The estimate (`draws.fd_estimate`) is FD
at n_final through a candidate already drawn there: every candidate's sample i starts from
the same noise, so the paired difference carries far less noise than either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..analysis.quality import feature_space
from ..defaults import N_BOOT, TUNE_N_FINAL, TUNE_N_START
from ..errors import NoiseshiftError
from ..guidance import low_dim_warning
from ..pretrained import independent_meter
from ..sampling import model_device
from .candidates import CANDIDATES, fitting
from .draws import (
    Draws,
    draw,
    fd_estimate,
    paired_spread,
    point_fd,
    resolved_better,
    score,
)
from .result import Row, TuneResult

Progress = Callable[[str, int, int], None]

#: Rows per model call (fewer when n_start is smaller): n_start and n_final are multiples
#: of it, so the samples a candidate adds meet the same batch-mates they would in one draw
#: of n_final (bit-identical samples).
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


def tune(model, budget_nfe: int, data, *, seeds=(0,), candidates=CANDIDATES,
         estimator=None, n_start: int = TUNE_N_START,
         n_final: int = TUNE_N_FINAL, share: float = 0.25,
         n_boot: int = N_BOOT, device="auto", progress: Progress | None = None, space=None,
         meter="auto") -> TuneResult:
    """Search ``candidates`` at ``budget_nfe`` model evaluations per sample on ``model``
    (a denoiser), scored on ``data`` (a `Dataset`): FD in the feature space `report` uses,
    precision/recall, and the shift by an independent meter. The first candidate is the
    baseline. ``estimator`` guides the estimator-based NAG modes (candidates that need one
    are left out without it). ``share``: of the model evaluations drawing every candidate
    to n_final would take, what the whole search may spend (its first draws always run;
    n_start = n_final draws that whole grid). Returns every candidate's row and the
    recommendation."""
    clock = time.perf_counter()
    seeds = _seeds(seeds)
    if not 0 < share <= 1:
        raise NoiseshiftError(f"share must be in (0, 1], got {share}")
    if not 1 <= n_start <= n_final:
        raise NoiseshiftError(f"need 1 <= n_start <= n_final, got {n_start}, {n_final}")
    pairs, notes = fitting(candidates, budget_nfe, model, has_estimator=estimator is not None)
    dim = getattr(data, "dim", None)
    if dim is not None and low_dim_warning(int(dim)) and any(c.nag_mode for c, _ in pairs):
        notes.append(low_dim_warning(int(dim)))
    if not pairs or pairs[0][0] is not candidates[0]:
        raise NoiseshiftError(f"the baseline {candidates[0].name!r} does not fit a budget of "
                              f"{budget_nfe} model evaluations")
    block = min(BLOCK, int(n_start))
    n_start, n_final = _round(n_start, block), _round(n_final, block)
    ctx = _context(model, estimator, data, n_final, block, device, n_boot, space, meter)
    draws = {c.name: Draws(c, steps, seeds) for c, steps in pairs}
    race = Race(list(draws.values()), ctx, seeds, n_start, share, progress)
    rows = race.run()
    return TuneResult(rows=rows, budget=budget_nfe, seeds=seeds,
                      plan=[(n_start, len(pairs) - 1), (n_final, race.finalists - 1)],
                      notes=notes, space=ctx.space.label,
                      meter=getattr(ctx.meter, "name", None),
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


class Race:
    """The baseline to n_final, the others to n_start; then, while the budget allows,
    candidates whose estimate at n_final (`fd_estimate` through the drawn candidate whose
    samples differ least from its own) reaches below the recommendation's FD are drawn
    there, in `_priority`'s order."""

    def __init__(self, draws: list[Draws], ctx: Context, seeds, n_start: int, share: float,
                 progress: Progress | None):
        self.draws, self.ctx, self.seeds, self.n_start = draws, ctx, seeds, n_start
        self.progress = progress or (lambda *a: None)
        grid = sum(self._cost(d, ctx.n_total) for d in draws)
        first = self._cost(draws[0], ctx.n_total) + sum(self._cost(d, n_start)
                                                        for d in draws[1:])
        self.budget = max(first, share * grid)
        self.spent, self.estimates, self.resolved, self._through = 0, {}, {}, {}

    @property
    def finalists(self) -> int:
        return sum(d.n >= self.ctx.n_total for d in self.draws)

    def _cost(self, d: Draws, n: int) -> int:
        """Model evaluations of drawing ``d`` from where it is to n samples per seed."""
        return (n - d.n) * len(self.seeds) * d.candidate.model_evals(d.steps)

    def run(self) -> list[Row]:
        base, *rest = self.draws
        self._grow(base, self.ctx.n_total, "baseline")
        for d in rest:
            self._grow(d, self.n_start, "screen")
        while (d := self._next()) is not None:
            self._grow(d, self.ctx.n_total, "race")
        rows = [self._row(d, base) for d in self.draws]
        return sorted(rows, key=lambda row: (-row.rung, (row.estimate or row.fd).value
                                             if row.rung == 0 else row.fd.value))

    def _next(self) -> Draws | None:
        """The candidate to draw to n_final next, or None: no estimate's CI reaches below
        the FD of what would be recommended now (the best finalist whose change against
        the baseline is resolved), or the next draw would pass the budget."""
        full = [d for d in self.draws if d.n >= self.ctx.n_total]
        open_ = [d for d in self.draws if d.n < self.ctx.n_total]
        if not open_:
            return None
        for d in full:
            if d.candidate.name not in self.resolved:
                self.resolved[d.candidate.name] = resolved_better(d, self.draws[0], self.ctx)
        best = min(point_fd(d, self.ctx) for d in full if self.resolved[d.candidate.name])
        for d in open_:
            control = min(full, key=lambda k, d=d: paired_spread(d, k))
            # an open candidate's samples and a finalist's are fixed: its estimate changes
            # only with its control
            key = (d.candidate.name, control.candidate.name)
            if key not in self._through:
                self._through[key] = fd_estimate(d, control, self.ctx)
            self.estimates[d.candidate.name] = self._through[key]
        d = min(open_, key=lambda d: _priority(self.estimates[d.candidate.name], best))
        fits = self.spent + self._cost(d, self.ctx.n_total) <= self.budget
        return d if fits and self.estimates[d.candidate.name].lo < best else None

    def _grow(self, d: Draws, n: int, stage: str) -> None:
        """Draw ``d`` up to n samples per seed."""
        cost, lo = self._cost(d, n), d.n
        if cost <= 0:
            return
        for seed in self.seeds:
            self.progress(f"{stage}: {d.candidate.name}, n = {n}", self.spent,
                          round(self.budget))
            (self.ctx.drawer or draw)(d, self.ctx, seed, lo, n)
        self.spent += cost
        self.progress(f"{stage}: {d.candidate.name}, n = {n}", self.spent, round(self.budget))

    def _row(self, d: Draws, base: Draws) -> Row:
        final = d.n >= self.ctx.n_total
        return Row(candidate=d.candidate, steps=d.steps, rung=int(final),
                   n=d.n * len(d.feats), estimate=self.estimates.get(d.candidate.name),
                   **score(d, base, self.ctx))


def _priority(estimate, best: float) -> tuple:
    """Which open candidate to draw first: those estimated below ``best``, lowest first;
    then those whose CI only reaches below it, lowest bound first. The second kind is
    mostly a candidate paired loosely with every finalist (an ODE solver against the
    stochastic baseline: its estimate is noise of several FD units); drawing it gives its
    family a close control."""
    return (0, estimate.value) if estimate.value < best else (1, estimate.lo)
