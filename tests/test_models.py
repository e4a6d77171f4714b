import json

import pytest
import torch

from noiseshift.data import GaussianMixture
from noiseshift.errors import CheckpointError, NoiseshiftError
from noiseshift.models import (
    build_model,
    describe,
    load_model,
    model_shape,
    num_params,
    save_model,
)
from noiseshift.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULES = ["linear", "vp-cosine", "vp-linear", "ve"]
PREDICTIONS = ["velocity", "eps", "x0", "score"]

def _unet(**kw):
    cfg = {"kind": "unet", "shape": [1, 16, 16], "schedule": "linear", "num_classes": 10,
           "t_dropout": 0.3, "class_dropout": 0.1, **kw}
    return build_model(cfg)


def _mlp(**kw):
    return build_model({"kind": "mlp", "shape": [8], "schedule": "linear", "width": 32,
                        "depth": 2, "num_classes": 3, "t_dropout": 0.3, **kw})


def _randomise(model, seed=0):
    # Fresh models have a zero output layer; perturb every weight so outputs depend on inputs.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_default_unet_size_and_shape():
    m = _unet()
    assert 80_000 <= num_params(m) <= 130_000
    x = torch.randn(4, 1, 16, 16)
    assert m(x, torch.rand(4), y=torch.arange(4)).shape == x.shape
    assert model_shape(m) == (1, 16, 16)


@pytest.mark.parametrize("side", [8, 9, 12])
def test_unet_any_side_and_channels(side):
    m = _randomise(_unet(shape=[3, side, side], channels=[8, 16, 16], num_classes=0))
    x = torch.randn(2, 3, side, side)
    assert m(x, torch.rand(2)).shape == x.shape


def test_protocol_attributes_and_json_config():
    for m in (_unet(), _mlp()):
        assert m.prediction == "velocity"
        assert m.schedule == get_schedule("linear")
        assert m.supports_null_t
        json.dumps(m.config)
        assert build_model(m.config).config == m.config
    assert not _mlp(t_dropout=0.0).supports_null_t
    d = describe(_mlp())
    assert d["kind"] == "mlp" and d["params"] > 0 and d["t_dropout"] == 0.3


def test_scalar_t_broadcasts():
    m = _randomise(_mlp())
    x = torch.randn(5, 8)
    assert torch.equal(m(x, 0.4), m(x, torch.full((5,), 0.4)))


def test_null_t_token_ignores_t():
    for m in (_randomise(_unet()), _randomise(_mlp())):
        x = torch.randn(3, *m.shape)
        drop = torch.ones(3, dtype=torch.bool)
        a = m(x, torch.full((3,), 0.2), drop_t=drop)
        b = m(x, torch.full((3,), 0.9), drop_t=drop)
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(m(x, torch.full((3,), 0.2)), m(x, torch.full((3,), 0.9)))


def test_null_class_token():
    m = _randomise(_mlp())
    x, t = torch.randn(4, 8), torch.rand(4)
    drop = torch.ones(4, dtype=torch.bool)
    a = m(x, t, y=torch.tensor([0, 1, 2, 0]), drop_y=drop)
    b = m(x, t, y=torch.tensor([2, 2, 1, 1]), drop_y=drop)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, m(x, t, y=None), atol=1e-6)
    assert not torch.allclose(m(x, t, y=torch.zeros(4, dtype=torch.long)),
                              m(x, t, y=torch.ones(4, dtype=torch.long)))


def test_rows_are_independent_under_mixed_masks():
    m = _randomise(_unet())
    x, t, y = torch.randn(4, 1, 16, 16), torch.rand(4), torch.arange(4)
    drop_t = torch.tensor([True, False, True, False])
    drop_y = torch.tensor([False, False, True, True])
    both = m(x, t, y=y, drop_t=drop_t, drop_y=drop_y)
    for i in range(4):
        one = m(x[i:i + 1], t[i:i + 1], y=y[i:i + 1], drop_t=drop_t[i:i + 1],
                drop_y=drop_y[i:i + 1])
        assert torch.allclose(both[i:i + 1], one, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_fresh_model_is_exact_for_gaussian_data(schedule, prediction):
    # The preconditioning's skip term is the best linear guess of the target, and a fresh
    # model's network outputs 0: for data N(0, m2 I) it is the exact denoiser.
    m2 = 0.49
    model = build_model({"kind": "mlp", "shape": [6], "schedule": schedule,
                         "prediction": prediction, "data_m2": m2})
    gauss = GaussianMixture(torch.zeros(1, 6), m2**0.5)
    sch = get_schedule(schedule)
    g = torch.Generator().manual_seed(0)
    for t in (0.05, 0.3, 0.7, 0.95):
        x = float(sch.alpha(t)) * gauss.sample(16, g)[0] + float(sch.sigma(t)) * torch.randn(
            16, 6, generator=g)
        exact = gauss.predict(x.double(), t, sch, prediction).float()
        got = model(x, torch.full((16,), t))
        assert torch.allclose(got, exact, rtol=1e-4, atol=1e-4 * exact.abs().max())


def test_x0_preconditioning_is_edm():
    # For x0 prediction under VE (alpha = 1) the coefficients are EDM's, sigma_data^2 = m2.
    m2 = 0.25
    model = build_model({"kind": "mlp", "shape": [4], "schedule": "ve", "prediction": "x0",
                         "data_m2": m2})
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    s = model.schedule.sigma(t)
    c_in, c_skip, c_out = model.coefficients(t)
    assert torch.allclose(c_in, 1 / (s**2 + m2).sqrt())
    assert torch.allclose(c_skip, m2 / (s**2 + m2))
    assert torch.allclose(c_out, s * m2**0.5 / (s**2 + m2).sqrt())


def test_bad_configs():
    with pytest.raises(NoiseshiftError, match="kind"):
        build_model({"kind": "transformer", "shape": [2], "schedule": "linear"})
    with pytest.raises(NoiseshiftError, match="lacks"):
        build_model({"kind": "mlp", "schedule": "linear"})
    with pytest.raises(NoiseshiftError, match="prediction"):
        build_model({"kind": "mlp", "shape": [2], "schedule": "linear", "prediction": "v"})
    with pytest.raises(NoiseshiftError, match="UNet"):
        build_model({"kind": "unet", "shape": [16], "schedule": "linear"})


# -- checkpoints ------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    m = _randomise(_unet(schedule="vp-cosine"))
    m.info = {"final_loss": 0.5}
    path = save_model(m, tmp_path / "m.pt")
    back = load_model(path)
    assert back.config == m.config and back.info == {"final_loss": 0.5}
    assert back.schedule == get_schedule("vp-cosine") and not back.training
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 2])
    assert torch.equal(back(x, t, y), m(x, t, y))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "noiseshift.model" and ckpt["version"] == 1
    assert json.loads(ckpt["config"]) == m.config


def test_ema_state_is_preferred(tmp_path):
    m, other = _randomise(_mlp(), 0), _randomise(_mlp(), 1)
    save_model(m, tmp_path / "m.pt", ema_state=other.state_dict())
    x, t = torch.randn(3, 8), torch.rand(3)
    assert torch.equal(load_model(tmp_path / "m.pt")(x, t), other(x, t))
    assert torch.equal(load_model(tmp_path / "m.pt", ema=False)(x, t), m(x, t))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a noiseshift checkpoint"):
        load_model(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no format tag"):
        load_model(tmp_path / "foreign.pt")
    good = save_model(_mlp(), tmp_path / "good.pt")
    ckpt = torch.load(good, weights_only=True)
    torch.save({**ckpt, "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_model(tmp_path / "v2.pt")
    torch.save({**ckpt, "format": "noiseshift.estimator"}, tmp_path / "est.pt")
    with pytest.raises(CheckpointError, match="estimator"):
        load_model(tmp_path / "est.pt")
    torch.save({**ckpt, "config": json.dumps({**json.loads(ckpt["config"]), "width": 64})},
               tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(tmp_path / "mismatch.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a noiseshift checkpoint"):
        load_model(tmp_path / "trunc.pt")


def test_pickled_objects_are_refused(tmp_path):
    from fractions import Fraction  # any class outside the weights-only allow list

    torch.save({"format": "noiseshift.model", "version": 1, "obj": Fraction(1, 3)},
               tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="not a noiseshift checkpoint"):
        load_model(tmp_path / "e.pt")
