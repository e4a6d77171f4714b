"""Known answers of the audit (a sampler with a perfect model) and of the decomposition of a
recorded run into the sampler's and the network's parts (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from noiseshift.analysis.audit import audit_builtin, default_mixture
from noiseshift.analysis.decompose import decompose_run
from noiseshift.analysis.simulation import PerturbedDenoiser, exact_meter
from noiseshift.data import MixtureDenoiser
from noiseshift.io import open_trajectories
from noiseshift.recording import sample_and_record

pytestmark = pytest.mark.usefixtures("one_thread")
N = 128


@pytest.fixture(scope="module")
def mix():
    return default_mixture()


@pytest.fixture(scope="module")
def meter(mix):
    return exact_meter(mix, "linear")


def _holds_zero(df, part="shift", slack=0.0):
    return bool(((df[f"{part}_lo"] - slack <= 0) & (df[f"{part}_hi"] + slack >= 0)).all())


@pytest.mark.parametrize("sampler,steps", [("euler", 64), ("heun", 32), ("ddim", 64),
                                           ("euler-maruyama", 128)])
def test_exact_model_at_fine_steps_shows_no_shift(mix, meter, sampler, steps):
    res = audit_builtin(mix, "linear", sampler=sampler, steps=steps, n=N, meter=meter)
    assert _holds_zero(res.bands), res.bands
    assert res.mean_abs.value < 0.01


def _record(tmp_path, model, steps, name="run"):
    path = tmp_path / f"{name}-{steps}.h5"
    sample_and_record(model, path, "unguided", N, steps=steps, seed=3)
    return open_trajectories(path).run("unguided")


def test_euler_maruyama_sampler_part_halves_when_steps_double(tmp_path, mix, meter):
    exact = MixtureDenoiser(mix.mixture, "linear")
    part = {}
    for steps in (8, 16):
        dec = decompose_run(exact, _record(tmp_path, exact, steps), meter, mix, k=4)
        assert dec.reproduced == 0.0
        part[steps] = float(dec.table.sampler.abs().mean())
    assert 0.3 < part[16] / part[8] < 0.7, part


def test_injected_network_error_is_recovered(tmp_path, mix, meter):
    """A known network error (x0 shrunk by 10%): the network part equals the shift of the
    same perturbed model at fine steps, and the sampler part equals the audit of the
    sampler with the exact model."""
    exact = MixtureDenoiser(mix.mixture, "linear")
    net = PerturbedDenoiser(exact, "gain", -0.1)
    net.mixture = mix.mixture
    dec = decompose_run(net, _record(tmp_path, net, 16), meter, mix, k=8)
    injected = audit_builtin(mix, "linear", steps=128, n=N, seed=5, meter=meter, model=net)
    audit = audit_builtin(mix, "linear", steps=16, n=N, seed=3, meter=meter)
    assert dec.table.network.abs().max() > 0.05  # the injected error is resolvable
    inj = injected.table.iloc[::8].reset_index(drop=True)  # the run's 16 step times
    assert np.allclose(inj.t, dec.table.t)
    half = lambda df, c: (df[f"{c}_hi"] - df[f"{c}_lo"]) / 2  # noqa: E731
    assert (abs(dec.table.network - inj["shift"])
            < half(inj, "shift") + half(dec.table, "network") + 0.005).all()
    assert abs(dec.table.network.mean() - inj["shift"].mean()) < 0.01
    ref = audit.table
    # both are estimates: the tolerance holds both CIs (as for the network part above)
    assert (abs(dec.table.sampler - ref["shift"])
            < half(ref, "shift") + half(dec.table, "sampler") + 0.005).all()
    assert abs(dec.table.sampler.mean() - ref["shift"].mean()) < 0.008
    assert np.allclose(dec.table.total, dec.table.sampler + dec.table.network)
