"""Split a recorded run's noise shift into the sampler's part and the network's part.

A trajectory file stores states, not the sampler's Brownian increments. It does store the
seed, the sampler settings and the model, so the run is re-generated from its seed (the same
draws in the same order as `sampling.sample`; the states are checked against the file,
bit for bit) while its standard normal draws are kept. Then the same network runs at k times
the steps from the same initial noise: on the same Brownian path (the coarse increments
bridged to the fine grid, `simulation.bridge_increments`) for Euler-Maruyama, on the refined
grid for the deterministic samplers. One meter reads all three sets of states:

- total   = reading(run)      - reading(true x_t at t)
- sampler = reading(run)      - reading(fine run)       (paired per sample)
- network = reading(fine run) - reading(true x_t at t)

so total = sampler + network exactly, step by step. The fine run still has discretisation
error of its own, E / k^p for a sampler of order p whose run has error E: the raw difference
coarse - fine is E (1 - k^-p), and left alone it would put E / k^p into the network part (an
eighth of the sampler's error at k = 8 for a first-order sampler; half at k = 2). So both
parts are extrapolated to k -> infinity (Richardson): sampler = (coarse - fine) / (1 - k^-p),
network = total - sampler, with p = `ORDERS[sampler]` (weak order 1 for Euler-Maruyama, 1
for Euler and DDIM, 2 for Heun). On the default digits run k = 2 and k = 8 give the same
extrapolated parts (+0.060 and +0.060 sampler, +0.006 and +0.005 network at t < 0.25);
the raw difference is kept as `coarse_minus_fine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import NoiseshiftError
from ..sampling import Blocked, IndexedNoise, get_sampler, sample_block, timesteps
from .shifts import band_table, read_states, shift_table, true_readings
from .simulation import bridge_increments, fine_grid, reference_trajectory
from .statistics import N_BOOT

if TYPE_CHECKING:
    import pandas as pd

PARTS = ("total", "sampler", "network")
PAIRED = "sample by sample: same initial noise and the same noise path"
ORDERS = {"euler": 1, "ddim": 1, "euler-maruyama": 1, "heun": 2}

__all__ = ["Decomposition", "PAIRED", "PARTS", "check_settings", "decompose_run", "dominance",
           "regenerate", "split_parts"]


@dataclass
class Decomposition:
    label: str
    k: int
    n: int
    table: pd.DataFrame     # per step: step, t, and total/sampler/network with _lo, _hi
    bands: pd.DataFrame     # per band, the same parts
    reproduced: float       # max |regenerated - recorded| over the run's states
    sentence: str = ""
    pairing: str = PAIRED   # how the run's and the fine run's samples pair up
    t_gap: float = 0.0      # max |t of the fine state read - t of the run's step|

    def to_dict(self) -> dict:
        return {"label": self.label, "k": self.k, "n": self.n, "reproduced_max_abs_diff":
                self.reproduced, "sentence": self.sentence, "pairing": self.pairing,
                "t_gap": self.t_gap,
                "per_step": self.table.to_dict("records"),
                "bands": self.bands.to_dict("records")}


class _KeptDraws:
    """A noise_sampler that passes on the run's own draws (`sampling.IndexedNoise`) and keeps
    each one, so the run's Brownian increments are known."""

    def __init__(self, noise: IndexedNoise):
        self.noise, self.draws = noise, []

    def __call__(self, t, t_next):
        z = self.noise.draw()
        self.draws.append(z)
        return z


def _split(settings: dict) -> tuple[str, int, np.ndarray, dict]:
    kw = {k: v for k, v in settings.items()
          if k not in ("name", "steps", "t_max", "t_min", "recorded")}
    ts = timesteps(settings["steps"], settings["t_max"], settings["t_min"]).numpy()
    name = settings["name"]
    stochastic = name == "euler-maruyama" or (name == "ddim" and kw.get("eta", 0.0) > 0)
    if name == "ddim" and stochastic:
        raise NoiseshiftError("decompose supports euler, heun, ddim with eta=0 and "
                              "euler-maruyama; ddim with eta > 0 has no Brownian path to bridge")
    return name, settings["steps"], ts, kw


def _keep_every(k: int, states: list):
    def keep(info):
        if info["i"] % k == 0:
            states.append(info["x"].detach().clone())
    return keep


def _recorded(settings: dict, n: int) -> tuple[int, int]:
    """(samples the run drew, every how many steps it recorded): a run recorded with
    --record-n / --record-every holds the first samples and every k-th step only."""
    rec = settings.get("recorded") or {}
    return int(rec.get("n", n)), int(rec.get("every", 1))


def check_settings(settings, run) -> None:
    """Refuse, in one line, sampler settings decompose cannot re-run: from another writer,
    with keys missing, or disagreeing with the steps the file holds."""
    if not isinstance(settings, dict) or settings.get("name") not in ORDERS:
        name = settings.get("name") if isinstance(settings, dict) else settings
        raise NoiseshiftError(f"decompose re-runs the built-in samplers ({', '.join(ORDERS)});"
                              f" this run's sampler is {name!r}", run.path)
    missing = [k for k in ("steps", "t_max", "t_min") if k not in settings]
    if missing:
        raise NoiseshiftError(f"the run's sampler settings lack {missing}: not a run noiseshift "
                              f"can re-generate", run.path)
    try:
        ts = timesteps(int(settings["steps"]), float(settings["t_max"]),
                       float(settings["t_min"])).numpy()[:-1]
        every = _recorded(settings, run.n)[1]
    except (TypeError, ValueError):
        raise NoiseshiftError("the run's sampler settings are not numbers", run.path) from None
    t = np.asarray(run.t, dtype=np.float64)
    if every < 1 or len(ts[::every]) != len(t) or not np.allclose(ts[::every], t, atol=1e-6):
        raise NoiseshiftError(f"the run's sampler settings ({settings['steps']} steps) disagree "
                              f"with the {len(t)} steps the file holds", run.path)


@torch.no_grad()
def regenerate(model, settings: dict, seed: int, n: int, shape, labels=None):
    """The run re-generated from its seed as `sampling.sample` draws it: (x_T, states (S, N,
    ...) at the recorded steps, standard normal draws per step or None for a deterministic
    sampler)."""
    name, _, ts, kw = _split(settings)
    drawn, every = _recorded(settings, n)
    if isinstance(model, torch.nn.Module):
        model.eval()
    noise = IndexedNoise(seed, range(n), shape, torch.device("cpu"))
    x_T = float(model.schedule.sigma(float(ts[0]))) * noise.draw()
    draws = _KeptDraws(noise) if name == "euler-maruyama" else None
    states: list = []
    extra = {"noise_sampler": draws} if draws is not None else {}
    get_sampler(name)(Blocked(model, sample_block(drawn)), x_T.clone(), torch.as_tensor(ts),
                      y=labels, callback=_keep_every(every, states), **kw, **extra)
    return x_T, torch.stack(states), None if draws is None else draws.draws


@torch.no_grad()
def fine_states(model, settings: dict, x_T, draws, k: int, labels=None, seed: int = 0):
    """The same network at k times the steps from x_T (and on the bridged Brownian path):
    its states at the run's step times (S, N, ...)."""
    name, steps, ts, kw = _split(settings)
    if draws is not None:
        h = np.abs(np.diff(ts))
        coarse = torch.stack([z.double() * math.sqrt(hi)
                              for z, hi in zip(draws, h[:len(draws)], strict=True)])
        full = torch.zeros(steps, *x_T.shape, dtype=torch.float64)
        full[:len(coarse)] = coarse  # the last step (final denoise) draws nothing
        fine = bridge_increments(full, ts, k, torch.Generator().manual_seed(seed + 7919))
        states, _ = reference_trajectory(model, x_T.clone(), ts, fine, y=labels,
                                         diffusion=kw.get("diffusion", 2.0),
                                         final_denoise=kw.get("final_denoise", True))
        return states[::_recorded(settings, 0)[1]]
    states: list = []
    get_sampler(name)(model, x_T.clone(), fine_grid(ts, k), y=labels,
                      callback=_keep_every(k, states), **kw)
    return torch.stack(states[:steps])[::_recorded(settings, 0)[1]]


def decompose_run(model, run, meter, data, *, k: int = 8, n_boot: int = N_BOOT,
                  seed: int = 0, tolerance: float = 1e-5,
                  order: int | None = None) -> Decomposition:
    """Decompose recorded run `run` (an `io.Run`) of `model`, read by `meter` against true
    states of `data`; `order` (default `ORDERS` of the run's sampler) sets the
    extrapolation of the parts to infinitely many steps."""
    settings, run_seed = run.attrs["sampler"], run.attrs["seed"]
    if run_seed is None or not settings:
        raise NoiseshiftError("the run has no seed or sampler settings to re-generate it from",
                              run.path)
    check_settings(settings, run)
    shape = (getattr(model, "config", None) or {}).get("shape")
    if shape is not None and tuple(shape) != tuple(run.shape):
        raise NoiseshiftError(f"the run's states have shape {tuple(run.shape)}, but the model "
                              f"reads {tuple(shape)}: another model made this run", run.path)
    if (run.attrs.get("guidance") or {}).get("kind", "none") != "none":
        raise NoiseshiftError("decompose re-runs the model alone: pick an unguided run",
                              run.path)
    labels = None if run.labels is None else torch.as_tensor(run.labels, dtype=torch.int64)
    x_T, coarse, draws = regenerate(model, settings, run_seed, run.n, run.shape, labels)
    recorded = torch.as_tensor(np.asarray(run.states[:]))
    diff = float((coarse.float() - recorded.float()).abs().max())
    if diff > tolerance:
        raise NoiseshiftError(f"re-generating run {run.name!r} from its seed gives other states "
                              f"(max |diff| {diff:.3g}): another model, device or sampler?",
                              run.path)
    fine = fine_states(model, settings, x_T, draws, k, labels, seed)
    ts = np.asarray(run.t, dtype=np.float64)
    label = f"{run.name}: {settings['name']} {settings['steps']} steps, fine x{k}"
    return split_parts(label, k, ts, read_states(meter, coarse), read_states(meter, fine),
                       true_readings(meter, data, ts, run.n, seed),
                       order or ORDERS[settings["name"]], diff, n_boot=n_boot, seed=seed)


def split_parts(label: str, k: int, ts, rc, rf, rt, order: int, reproduced: float, *,
                n_boot: int = N_BOOT, seed: int = 0, pairing: str = PAIRED,
                t_gap: float = 0.0) -> Decomposition:
    """The decomposition from the meter's readings (S, N) of the run (`rc`), of the run at k
    times the steps read at the same steps (`rf`) and of true states (`rt`), extrapolated
    with the sampler's order (module docstring). Row i of `rc` and `rf` is one sample from
    one initial noise, so the bootstrap keeps whatever pairing `pairing` says there is."""
    c = 1.0 - float(k) ** -order
    parts = {"total": (rc, rt), "sampler": (rc / c, rf / c),
             "network": (rc - (rc - rf) / c, rt), "coarse_minus_fine": (rc, rf)}
    dec = Decomposition(label, k, rc.shape[1], shift_table(ts, parts, n_boot=n_boot, seed=seed),
                        band_table(ts, parts, n_boot=n_boot, seed=seed), reproduced,
                        pairing=pairing, t_gap=t_gap)
    dec.sentence = dominance(dec.bands)
    return dec


def _resolvable(row, part: str) -> bool:
    return row[f"{part}_lo"] > 0 or row[f"{part}_hi"] < 0


def dominance(bands: pd.DataFrame) -> str:
    """One sentence: which part is larger in each band of t (and where neither is resolvable)."""
    groups: dict[str, list[str]] = {"sampler": [], "network": [], "neither": []}
    for _, row in bands.iterrows():
        if not (_resolvable(row, "sampler") or _resolvable(row, "network")):
            groups["neither"].append(row.band)
            continue
        big = "sampler" if abs(row.sampler) > abs(row.network) else "network"
        groups[big].append(f"{row.band} ({row[big]:+.3f} vs {row[_other(big)]:+.3f})")
    said = [f"the {p} dominates at t in {', '.join(b)}" for p, b in groups.items()
            if b and p != "neither"]
    if groups["neither"]:
        said.append(f"neither part is resolvable at t in {', '.join(groups['neither'])}")
    return ("; ".join(said) or "no band holds steps").capitalize() + "."


def _other(part: str) -> str:
    return "network" if part == "sampler" else "sampler"
