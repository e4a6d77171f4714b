"""The t-trust probe against exact denoisers whose answers are known."""

import json

import pytest
import torch
from typer.testing import CliRunner

from noiseshift.analysis.probe import branch_gap, noise_directions, probe
from noiseshift.cli import app
from noiseshift.data import Dataset, GaussianMixture, MixtureDenoiser, t_grid
from noiseshift.errors import NoiseshiftError
from noiseshift.schedules import get_schedule

LIN = get_schedule("linear")
GRID = t_grid(64)


class Exact(MixtureDenoiser):
    """Exact mixture denoiser; `reads_x` makes the conditional branch ignore t as well."""

    def __init__(self, mixture, prediction="velocity", reads_x=False, null_t=True):
        super().__init__(mixture, LIN, prediction)
        self.reads_x, self.null_t = reads_x, null_t

    @property
    def supports_null_t(self):
        return self.null_t

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        out = self.mixture.predict(x, t, self.schedule, self.prediction)
        rows = torch.ones(len(x), dtype=torch.bool) if self.reads_x else drop_t
        if rows is not None and bool(rows.any()):
            i = rows.nonzero().squeeze(1)
            out[i] = self.mixture.unconditional_predict(x[i], self.schedule, self.prediction,
                                                        GRID)
        return out


@pytest.fixture(scope="module")
def low_rank():
    """Ten point masses spanning 6 of 48 dimensions: the other 42 carry only noise."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(48, 6, generator=g, dtype=torch.float64))
    means = torch.randn(10, 6, generator=g, dtype=torch.float64) @ q.T
    mix = GaussianMixture(means, 0.0)
    x, k = mix.sample(400, g)
    return mix, q, x, k


def test_noise_directions_from_known_subspace_and_from_the_span(low_rank):
    mix, q, x, _ = low_rank
    known = Dataset(x, None, {"name": "test"}, subspace=q)
    found = Dataset(x, None, {"name": "test"})
    for data, kind in ((known, "subspace"), (found, "span")):
        basis, c2, what = noise_directions(data)
        assert kind in what and basis.shape == (48, 42)
        assert torch.allclose(basis.T @ basis, torch.eye(42, dtype=torch.float64), atol=1e-8)
        assert float((q.T @ basis).abs().max()) < 1e-6 and c2 < 1e-10


def test_exact_model_trusts_t_and_its_null_branch_reads_x(low_rank):
    mix, _, x, _ = low_rank
    data = Dataset(x, None, {"name": "test"})
    res = probe(Exact(mix), data, rhos=(0.2, 0.4), ts=(0.3, 0.6), n=96)
    for r in res.rows:
        assert r["gain_cond"] == pytest.approx(1.0, abs=1e-6)
        assert r["ideal_null"] == pytest.approx(r["t"] / r["t_true"], rel=1e-9)
        # The exact null-t branch averages over p(t|x), which is narrow in 42 noise dims.
        assert r["gain_null"] == pytest.approx(r["ideal_null"], rel=0.04)
    assert res.trusts_t == pytest.approx(1.0, abs=0.1)
    assert "trusts its t input" in res.verdict


def test_a_model_that_reads_x_leaves_no_signal(low_rank):
    mix, _, x, _ = low_rank
    data = Dataset(x, None, {"name": "test"})
    res = probe(Exact(mix, reads_x=True), data, rhos=(0.3,), ts=(0.4, 0.7), n=96)
    for r in res.rows:
        assert r["gain_cond"] == pytest.approx(r["gain_null"], abs=1e-9)
        assert r["gain_cond"] == pytest.approx(r["ideal_null"], rel=0.04)
    assert abs(res.trusts_t) < 0.05
    assert "reads its noise level from x" in res.verdict
    assert "--nag-mode estimator-step, the default" in res.verdict


def test_without_a_null_branch_the_conditional_gain_decides(low_rank):
    mix, _, x, _ = low_rank
    data = Dataset(x, None, {"name": "test"})
    trusting = probe(Exact(mix, null_t=False), data, rhos=(0.3,), ts=(0.5,), n=64)
    assert "gain_null" not in trusting.rows[0] and trusting.trusts_t == pytest.approx(1.0)
    assert "no null-t branch" in trusting.verdict
    reader = probe(Exact(mix, reads_x=True, null_t=False), data, rhos=(0.3,), ts=(0.5,), n=64)
    assert abs(reader.trusts_t) < 0.1


def test_eps_model_has_the_same_ideals(low_rank):
    mix, _, x, _ = low_rank
    res = probe(Exact(mix, "eps"), Dataset(x, None, {"name": "test"}), rhos=(0.25,),
                ts=(0.4,), n=64)
    r = res.rows[0]
    assert r["gain_cond"] == pytest.approx(1.0, abs=1e-6)
    assert r["ideal_null"] == pytest.approx(0.4 / 0.5)


def test_x0_model_is_refused(low_rank):
    mix, _, x, _ = low_rank
    with pytest.raises(NoiseshiftError, match="x0"):
        probe(Exact(mix, "x0"), Dataset(x, None, {"name": "test"}))


@pytest.mark.slow
def test_probe_command_on_a_tiny_trained_model(tmp_path):
    from noiseshift.data import load_digits
    from noiseshift.models import save_model
    from noiseshift.training import train_denoiser

    model = train_denoiser(load_digits(12), "linear", steps=20, batch_size=32,
                           channels=[8, 16], ema_decay=None)
    path = save_model(model, tmp_path / "m.pt")
    runner = CliRunner()
    res = runner.invoke(app, ["probe", "--model", str(path), "--json", "--n", "32",
                              "--ts", "0.4,0.7", "--rhos", "0.2"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["rows"]) == 2 and out["directions"].startswith("complement")
    assert {"gain_cond", "gain_null", "ideal_null", "signal"} <= set(out["rows"][0])
    assert isinstance(out["verdict"], str)
    res = runner.invoke(app, ["probe", "--model", str(path), "--n", "32", "--ts", "0.5"])
    assert res.exit_code == 0 and "verdict" in res.stdout.lower()
    # A user mistake is a NoiseshiftError, which `noiseshift.cli.main` prints as one line.
    res = runner.invoke(app, ["probe", "--model", str(tmp_path / "missing.pt")])
    assert isinstance(res.exception, NoiseshiftError) and "no such file" in str(res.exception)
    res = runner.invoke(app, ["probe", "--model", str(path), "--ts", "a,b"])
    assert isinstance(res.exception, NoiseshiftError) and "--ts" in str(res.exception)


class _Shrunk(torch.nn.Module):
    """eps model: the conditional branch predicts x / 2, the null-t branch (1 - a) x / 2, so
    d = a x / 2 exactly, along the predicted noise."""

    prediction, num_classes, supports_null_t = "eps", 0, True
    schedule = LIN

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, t, y=None, drop_t=None, drop_y=None):
        scale = torch.where(drop_t, 1 - self.a, 1.0).reshape(-1, *[1] * (x.ndim - 1))
        return 0.5 * x * scale


def test_branch_gap_has_the_known_size_and_direction(low_rank):
    mix, _, x, _ = low_rank
    data = Dataset(x, None, {"name": "test"})
    states = torch.randn(64, 48, generator=torch.Generator().manual_seed(3))
    rows = branch_gap(_Shrunk(0.2), data, [(0.5, states, None)])
    assert [r["source"] for r in rows] == ["sampler", "true"]
    for r in rows:
        assert r["rel"] == pytest.approx(0.2, rel=1e-6)
        assert r["cos_pred"] == pytest.approx(1.0, abs=1e-9)
        assert r["noise_dims"] == pytest.approx(42 / 48)
    assert rows[0]["eps_rms"] == pytest.approx(0.1 * float(states.pow(2).mean().sqrt()),
                                               rel=1e-6)
    assert "cos_true" in rows[1] and "cos_true" not in rows[0]


def test_exact_branch_gap_is_zero_on_true_states_and_removes_excess_noise(low_rank):
    mix, _, x, _ = low_rank
    data = Dataset(x, None, {"name": "test"})
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(len(x), (96,), generator=g)
    # States noised to 1.4 t but labelled t: the exact gap there removes noise (along the
    # predicted noise); on true x_t it is a quarter as large and points nowhere in particular.
    noisier = LIN.add_noise(x[idx], torch.randn(96, 48, generator=g, dtype=torch.float64),
                            0.56).float()
    rows = branch_gap(Exact(mix), data, [(0.4, noisier, None)])
    shifted, true = rows
    assert true["eps_rms"] < 0.4 * shifted["eps_rms"]
    assert shifted["cos_pred"] > 0.8 and abs(true["cos_pred"]) < 0.1
    assert abs(true["cos_true"]) < 0.1
    with pytest.raises(NoiseshiftError, match="null-t"):
        branch_gap(Exact(mix, null_t=False), data, [(0.4, noisier, None)])
