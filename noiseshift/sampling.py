"""Samplers as plain functions, in the style of k-diffusion's sampling.py.

Each sampler is ``fn(model, x, ts, *, y=None, callback=None, generator=None,
final_denoise=True, ...)``: it integrates from ``ts[0]`` down to ``ts[-1]`` and calls
``callback(info)`` once per step, *before* the update, with
``info = {"i": i, "t": float ts[i], "x": state fed to the model, "x0_pred": model's x0}``.
Recording is just such a callback (`io.TrajectoryWriter.callback`; see
`recording.sample_and_record`). ``step_hook(info)``, if given, is called after each update
with ``{"i", "t", "t_next", "x", "x_next", "x0_pred"}`` and returns the state to go on from:
where sampler-side corrections (DCW, a corrector step) act. The last step's x0 (with
``final_denoise``) does not pass through it.

Model outputs are converted only through ``model.schedule.convert``: samplers never
re-derive the schedule's math. With ``final_denoise`` the last step returns the model's x0
prediction (as SiT's samplers do), so stochastic samplers end without residual noise; the
score at sigma = 0 is therefore never needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager

import torch

from . import distributed, runtime
from .defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import NoiseshiftError
from .hooks import model_hooks
from .models import model_shape
from .timegrid import check_timesteps, named_grid, timesteps


def _call(model, x: torch.Tensor, t: float, y) -> tuple[torch.Tensor, str]:
    """The model's output at (x, t) and its parametrisation; t goes in as an (N,) float64
    row (networks cast it; exact models and guidance keep the precision)."""
    out = model(x, torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device), y=y)
    return out, model.prediction


def _to(model, out, src: str, dst: str, x: torch.Tensor, t: float) -> torch.Tensor:
    return model.schedule.convert(out, src, dst, x, t).to(x.dtype)


def _noise(x: torch.Tensor, generator: torch.Generator | None, noise_sampler=None,
           t: float | None = None, t_next: float | None = None) -> torch.Tensor:
    if noise_sampler is not None:
        return noise_sampler(t, t_next).to(device=x.device, dtype=x.dtype)
    if generator is None:
        return torch.randn_like(x)
    return runtime.randn(x.shape, generator, x.device, x.dtype)


def _step_info(i, t, x, x0, callback) -> None:
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0_pred": x0})


def _begin_step(model, x, ts, i: int, y, callback):
    """What every step starts with: the model's output at (x, ts[i]), its x0 prediction,
    and the callback. Returns (t, t_next, out, src, x0)."""
    t, t_next = float(ts[i]), float(ts[i + 1])
    out, src = _call(model, x, t, y)
    x0 = _to(model, out, src, "x0", x, t)
    _step_info(i, t, x, x0, callback)
    return t, t_next, out, src, x0


def _last(i: int, ts: torch.Tensor) -> bool:
    return i == len(ts) - 2


def _after(step_hook, i: int, t: float, t_next: float, x, x_next, x0) -> torch.Tensor:
    """The next state, through ``step_hook`` when there is one: a sampler-side correction
    (DCW, a corrector step) sees the step it follows and returns the state to go on from."""
    if step_hook is None:
        return x_next
    return step_hook({"i": i, "t": t, "t_next": t_next, "x": x, "x_next": x_next,
                      "x0_pred": x0})


@torch.no_grad()
def sample_euler(model, x, ts, *, y=None, callback=None, generator=None,
                 final_denoise=True, step_hook=None):
    """Euler on the probability-flow ODE dx/dt = v(x, t)."""
    for i in range(len(ts) - 1):
        t, t_next, out, src, x0 = _begin_step(model, x, ts, i, y, callback)
        if final_denoise and _last(i, ts):
            return x0
        x_next = x + (t_next - t) * _to(model, out, src, "velocity", x, t)
        x = _after(step_hook, i, t, t_next, x, x_next, x0)
    return x


@torch.no_grad()
def sample_heun(model, x, ts, *, y=None, callback=None, generator=None,
                final_denoise=True, step_hook=None):
    """Heun's second-order method on the ODE (two model calls a step; the last step, which
    ends at ts[-1], is a plain Euler step as in k-diffusion)."""
    for i in range(len(ts) - 1):
        t, t_next, out, src, x0 = _begin_step(model, x, ts, i, y, callback)
        if final_denoise and _last(i, ts):
            return x0
        v = _to(model, out, src, "velocity", x, t)
        x_e = x + (t_next - t) * v
        if _last(i, ts):
            x = _after(step_hook, i, t, t_next, x, x_e, x0)
            continue
        out2, src2 = _call(model, x_e, t_next, y)
        v2 = _to(model, out2, src2, "velocity", x_e, t_next)
        x = _after(step_hook, i, t, t_next, x, x + (t_next - t) * 0.5 * (v + v2), x0)
    return x


@torch.no_grad()
def sample_euler_maruyama(model, x, ts, *, y=None, callback=None, generator=None,
                          diffusion=2.0, final_denoise=True, noise_sampler=None,
                          step_hook=None):
    """Euler-Maruyama on the reverse SDE dx = [v - g^2/2 score] dt + g dW with
    g(t)^2 = diffusion * sigma(t) (`Schedule.diffusion_g2`). Any g gives the ODE's marginals
    for an exact model; a larger g corrects more and adds more noise. `noise_sampler(t,
    t_next)` (k-diffusion's) supplies each step's standard normal draw, e.g. a given
    Brownian path; by default it comes from `generator`."""
    sch = model.schedule
    for i in range(len(ts) - 1):
        t, t_next, out, src, x0 = _begin_step(model, x, ts, i, y, callback)
        if final_denoise and _last(i, ts):
            return x0
        h = t - t_next
        g2 = float(sch.diffusion_g2(t, diffusion))
        drift = sch.reverse_drift(out, src, x, t, diffusion)
        x_next = x - h * drift + (g2 * h) ** 0.5 * _noise(x, generator, noise_sampler, t,
                                                          t_next)
        x = _after(step_hook, i, t, t_next, x, x_next, x0)
    return x


@torch.no_grad()
def sample_ddim(model, x, ts, *, y=None, callback=None, generator=None, eta=0.0,
                final_denoise=True, noise_sampler=None, step_hook=None):
    """DDIM for any schedule: x_next = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z, with
    c = eta * sigma' * sqrt(1 - (sigma'/alpha')^2 / (sigma/alpha)^2), the DDPM posterior
    noise at eta = 1 (written so that alpha = 0 at t = 1 is fine). eta = 0 is
    deterministic and, under the linear schedule, the same as Euler."""
    sch = model.schedule
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        out, src = _call(model, x, t, y)
        x0, eps = (v.to(x.dtype) for v in sch.to_x0_eps(out, src, x, t))
        _step_info(i, t, x, x0, callback)
        if final_denoise and _last(i, ts):
            return x0
        a, s = float(sch.alpha(t)), float(sch.sigma(t))
        a_n, s_n = float(sch.alpha(t_next)), float(sch.sigma(t_next))
        ratio2 = (s_n * a) ** 2 / max((a_n * s) ** 2, 1e-300)
        c = eta * s_n * max(0.0, 1.0 - ratio2) ** 0.5
        x_next = a_n * x0 + max(0.0, s_n**2 - c**2) ** 0.5 * eps
        if c > 0:
            x_next = x_next + c * _noise(x, generator, noise_sampler, t, t_next)
        x = _after(step_hook, i, t, t_next, x, x_next, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, ts, *, y=None, callback=None, generator=None,
                    final_denoise=True, step_hook=None):
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``) for any
    schedule, one model call a step. With lambda = log(alpha / sigma) = log_snr / 2 and
    h = lambda' - lambda, the first-order step is the exact exponential integrator for a
    constant x0 prediction D: x' = (sigma'/sigma) x + alpha' (1 - e^-h) D, with
    e^-h = sigma' alpha / (sigma alpha') (finite where alpha = 0). From the second step D is
    extrapolated linearly in lambda: D (1 + 1/(2r)) - D_prev / (2r), r = h_prev / h; a step
    to sigma' = 0 stays first order."""
    sch, x0_prev, h_prev = model.schedule, None, None
    for i in range(len(ts) - 1):
        t, t_next, out, src, x0 = _begin_step(model, x, ts, i, y, callback)
        if final_denoise and _last(i, ts):
            return x0
        a, s = float(sch.alpha(t)), float(sch.sigma(t))
        a_n, s_n = float(sch.alpha(t_next)), float(sch.sigma(t_next))
        lam = sch.log_snr(torch.tensor([t, t_next], dtype=torch.float64)) / 2
        h = float(lam[1] - lam[0])
        d = x0
        if x0_prev is not None and s_n > 0 and h_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        decay = s_n * a / max(s * a_n, 1e-300)
        x_next = (s_n / s) * x + a_n * (1 - decay) * d
        x0_prev, h_prev = x0, h
        x = _after(step_hook, i, t, t_next, x, x_next, x0)
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler-maruyama": sample_euler_maruyama,
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise NoiseshiftError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


#: Sampler keywords that are the call's plumbing, not its settings: never recorded (a
#: ``step_hook``'s own settings go into the run's ``guidance`` description).
RUNTIME_KEYWORDS = frozenset({"y", "callback", "generator", "noise_sampler", "step_hook"})

#: Each sampler's settings and their defaults: the keys its runs' ``sampler`` attribute holds
#: beyond name, steps and the t range. Written out rather than read from the signatures, so
#: that renaming a keyword cannot silently change what a run records, nor stop old runs from
#: matching as baselines; tests/test_sampling.py holds them to the signatures.
SAMPLER_OPTIONS: dict[str, dict] = {
    "euler": {"final_denoise": True},
    "heun": {"final_denoise": True},
    "euler-maruyama": {"diffusion": 2.0, "final_denoise": True},
    "ddim": {"eta": 0.0, "final_denoise": True},
    "dpmpp-2m": {"final_denoise": True},
}


def sampler_settings(name: str, steps: int, t_max: float = 1.0, t_min: float = 0.0,
                     timesteps=None, schedule=None, **kw) -> dict:
    """The full settings of a sampler call (`SAMPLER_OPTIONS` filled in), as written into a
    trajectory file's ``sampler`` attribute (`RUNTIME_KEYWORDS` left out). A given grid
    ``timesteps`` (`check_timesteps`) sets steps and the t range and is recorded as
    ``timesteps``; without one the key is absent, so runs on the even grid match as before.
    A grid's name ('logsnr', `timegrid.GRIDS`) is laid out on ``schedule`` at ``steps`` from
    t_max to t_min and recorded as its times."""
    get_sampler(name)
    options = SAMPLER_OPTIONS[name]
    unknown = set(kw) - set(options) - RUNTIME_KEYWORDS
    if unknown:
        raise NoiseshiftError(f"sampler {name!r} takes no option(s) {sorted(unknown)}")
    grid = {}
    if isinstance(timesteps, str):
        if schedule is None:
            raise NoiseshiftError(f"the grid {timesteps!r} needs the model's schedule")
        timesteps = named_grid(timesteps, schedule, steps, t_max, t_min)
    if timesteps is not None:
        ts = check_timesteps(timesteps)
        steps, t_max, t_min = len(ts) - 1, float(ts[0]), float(ts[-1])
        grid = {"timesteps": [float(v) for v in ts]}
    return {"name": name, "steps": int(steps), "t_max": float(t_max), "t_min": float(t_min),
            **grid, **options, **{k: v for k, v in kw.items() if k in options}}


# -- drawing and running ----------------------------------------------------------------------

def draw_labels(num_classes: int, n: int, seed: int, y=None) -> torch.Tensor | None:
    """The labels `sample` uses: ``y`` (an int or n ints) if given, else drawn from the seed.

    Labels are the first draw from ``runtime.generator(seed)`` (even when ``y`` is given), so
    the noise that follows is the same whichever labels are used.
    """
    if not num_classes:
        if y is not None:
            raise NoiseshiftError("this model is not class-conditional; drop the class label")
        return None
    drawn = torch.randint(num_classes, (n,), generator=runtime.generator(seed))
    if y is None:
        return drawn
    y = torch.as_tensor(y, dtype=torch.int64).reshape(-1).expand(n).clone()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise NoiseshiftError(f"class label out of range: the model has classes "
                              f"0..{num_classes - 1}")
    return y


def safe_t_max(model, t_max: float = 1.0) -> float:
    """t_max, pulled in to where alpha >= 1e-3 for eps and score models: where alpha = 0
    (t = 1 under the linear and VP-cosine schedules) x0 = (x - sigma eps) / alpha is
    undefined, so those parametrisations cannot start there."""
    if model.prediction not in ("eps", "score") or float(model.schedule.alpha(t_max)) >= 1e-3:
        return t_max
    return float(model.schedule.t_from_alpha(1e-3))


def model_device(model, device="auto") -> torch.device:
    """'auto': where the model's parameters are (CPU for a model without any); otherwise
    the named device, and the model is moved there."""
    if device == "auto":
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        return params[0].device if params else torch.device("cpu")
    dev = runtime.resolve_device(device)
    if isinstance(model, torch.nn.Module):
        model.to(dev)
    return dev


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s own generator: a SplitMix64 mix of (seed, index), so
    neighbouring indices and seeds give unrelated streams."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z = ((z ^ (z >> shift)) * mult) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class IndexedNoise:
    """Noise that belongs to samples, not to a batch: sample i has its own CPU generator
    seeded from (seed, i) (`sample_seed`), whose first draw is its initial noise and whose
    next draws are the sampler's noise, one per stochastic step. So which process draws a
    sample, and beside which others, changes nothing: the same seed gives the same samples
    at any world size or batch split. Pass it as a sampler's ``noise_sampler``."""

    def __init__(self, seed: int, indices, shape, device="cpu", dtype=torch.float32,
                 stream: int = 0):
        self.indices = [int(i) for i in indices]
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        # stream > 0: a second, unrelated stream per sample (a step hook's own noise), so
        # that a correction never moves the sampler's draws.
        seeds = [sample_seed(seed, i) for i in self.indices]
        if stream:
            seeds = [sample_seed(s, stream) for s in seeds]
        self.gens = [runtime.generator(s) for s in seeds]

    def draw(self) -> torch.Tensor:
        """The next standard normal draw of every sample: (len(indices), *shape)."""
        if not self.gens:
            return torch.empty(0, *self.shape, dtype=self.dtype, device=self.device)
        rows = [torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.gens]
        return torch.stack(rows).to(self.device)

    def __call__(self, t=None, t_next=None) -> torch.Tensor:
        return self.draw()


#: Rows per model call in `sample` (at most): the batch is cut into blocks at fixed global
#: positions, so a sample meets the same batch-mates whatever the world size (CPU kernels
#: give bit-different results for different batch sizes).
SAMPLE_BLOCK = 256
MIN_BLOCK = 16


def sample_block(n: int) -> int:
    """The block size for n samples: `SAMPLE_BLOCK`, smaller for small n so that there are
    8 blocks to share out (but at least `MIN_BLOCK` rows). Depends on n only, never on the
    world size."""
    return min(SAMPLE_BLOCK, max(MIN_BLOCK, -(-n // 8)))


class Blocked:
    """A denoiser evaluated on fixed blocks of ``block`` rows (per-row inputs cut along the
    batch, outputs joined); every other attribute is the model's."""

    def __init__(self, model, block: int):
        self.model, self.block = model, int(block)

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def __call__(self, x, t, y=None, **kw):
        n, b = x.shape[0], self.block
        if n <= b:
            return self.model(x, t, y=y, **kw)

        def cut(v, sl):
            is_row = isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n
            return v[sl] if is_row else v

        outs = []
        for lo in range(0, n, b):
            sl = slice(lo, lo + b)
            outs.append(self.model(x[sl], cut(t, sl), y=cut(y, sl),
                                   **{k: cut(v, sl) for k, v in kw.items()}))
        return torch.cat(outs)


def block_shard(n: int, rank: int, world_size: int, block: int | None = None) -> range:
    """Rank ``rank``'s samples of n: a contiguous run of whole blocks (see `Blocked`;
    ``block`` defaults to `sample_block(n)`)."""
    block = sample_block(n) if block is None else block
    blocks = -(-n // block)
    per, extra = divmod(blocks, world_size)
    lo = rank * per + min(rank, extra)
    hi = lo + per + (1 if rank < extra else 0)
    return range(min(n, lo * block), min(n, hi * block))


def sample(model, n: int, *, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS,
           seed: int = 0, y=None, callback=None, device="auto", shape=None,
           t_max: float = 1.0, t_min: float = 0.0, indices=None,
           block: int | None = None, timesteps=None, **sampler_kw) -> torch.Tensor:
    """n samples from ``model`` with a named sampler, reproducible from ``seed``.

    The labels (for a class-conditional model; ``y`` overrides them) are drawn for all n
    from ``runtime.generator(seed)`` (`draw_labels`). Sample i's initial state
    x = sigma(t_max) * eps and its sampler noise come from its own generator
    (`IndexedNoise`), so a sample does not depend on which others are drawn with it.
    ``indices`` (default range(n)) draws only those samples of the n (a rank's shard,
    `block_shard`); the result then has len(indices) rows. The model sees blocks of
    ``block`` rows (`Blocked`; default `sample_block(n)`), so results are bit-identical
    for any shard of whole blocks. Eps and score models start at `safe_t_max`.
    ``timesteps`` (a decreasing list of times in [0, 1], or a grid's name such as
    'logsnr', `timegrid.GRIDS`, laid out at ``steps``) replaces the even grid of
    ``steps`` steps from t_max to t_min. ``sampler_kw`` go to the sampler (e.g.
    ``diffusion``, ``eta``, ``final_denoise``, ``step_hook``); wrappers in the model's chain
    that have ``sampler_hook`` add their step hooks (`model_hooks`).
    Returns (len(indices), *shape) on the model's device.
    """
    fn = get_sampler(name=sampler)
    ts = _grid(model, steps, t_max, t_min, timesteps)
    sampler_settings(sampler, steps, timesteps=ts, **sampler_kw)  # validates the options
    t_max = float(ts[0])
    dev = model_device(model, device)
    if shape is None:
        shape = model_shape(model)
    indices = range(n) if indices is None else indices
    labels = draw_labels(model.num_classes, n, seed, y)
    if labels is not None:
        labels = labels[torch.as_tensor(list(indices), dtype=torch.int64)].to(dev)
    noise = IndexedNoise(seed, indices, shape, dev)
    x = float(model.schedule.sigma(t_max)) * noise.draw()
    if "noise_sampler" in inspect.signature(fn).parameters:
        sampler_kw = {"noise_sampler": noise, **sampler_kw}
    with _eval(model):
        blocked = Blocked(model, sample_block(n) if block is None else block)
        hook = model_hooks(model, blocked, labels,
                           IndexedNoise(seed, indices, shape, dev, stream=1),
                           sampler_kw.pop("step_hook", None))
        return fn(blocked, x, ts, y=labels, callback=callback, step_hook=hook, **sampler_kw)


def _grid(model, steps: int, t_max: float, t_min: float, given) -> torch.Tensor:
    """The run's time grid: ``given`` (checked), a grid's name laid out at ``steps`` on the
    model's schedule (`named_grid`), or `timesteps`, starting no higher than `safe_t_max`
    (a given grid that starts above it is refused, not moved)."""
    if given is None:
        return timesteps(steps, safe_t_max(model, t_max), t_min)
    if isinstance(given, str):
        return named_grid(given, model.schedule, steps, safe_t_max(model, t_max), t_min)
    ts = check_timesteps(given)
    if float(ts[0]) > safe_t_max(model, float(ts[0])):
        raise NoiseshiftError(f"this {model.prediction} model cannot start at t = "
                              f"{float(ts[0]):g} (alpha = 0 there); start the grid at or "
                              f"below {safe_t_max(model, 1.0):.4f}")
    return ts


def sample_across_ranks(model, n: int, **kw) -> torch.Tensor:
    """`sample` under torchrun: each rank draws its blocks (`block_shard`) and rank 0 gets
    all n (the other ranks their own); without torchrun, plain `sample`."""
    rank, ws = distributed.world()
    if ws == 1:
        return sample(model, n, **kw)
    out = sample(model, n, indices=block_shard(n, rank, ws), **kw)
    parts = distributed.gather(out.cpu())
    return out if parts is None else torch.cat(parts).to(out.device)


@contextmanager
def _eval(model):
    """Run in eval mode, restoring the caller's mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def chain(*callbacks) -> Callable | None:
    """One callback that calls each of ``callbacks`` (None entries skipped)."""
    cbs = [c for c in callbacks if c is not None]
    if not cbs:
        return None
    if len(cbs) == 1:
        return cbs[0]

    def call(info):
        for c in cbs:
            c(info)

    return call


