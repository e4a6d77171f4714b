import pytest
import torch
from torch import nn

from noiseshift.data import MixtureDenoiser, load_digits, make_gmm
from noiseshift.errors import CheckpointError
from noiseshift.io import read_checkpoint
from noiseshift.models import build_model
from noiseshift.schedules import get_schedule
from noiseshift.training import (
    EMA,
    STATE_FORMAT,
    denoiser_config,
    denoising_loss,
    lr_factor,
    train_denoiser,
    train_loop,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"width": 64, "depth": 2, "batch_size": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def gmm():
    return make_gmm(dim=8, components=4, std=0.2, n=1024)


def _regression():
    w_true = torch.tensor([[1.5], [-2.0], [0.5]])

    def sample_batch(gen):
        x = torch.randn(32, 3, generator=gen)
        return x, x @ w_true

    def loss_fn(module, batch):
        x, y = batch
        return (module(x) - y).pow(2).mean()

    return sample_batch, loss_fn, w_true


def test_train_loop_fits_and_reports():
    sample_batch, loss_fn, w_true = _regression()
    module = nn.Linear(3, 1, bias=False)
    seen = []
    hist = train_loop(module, loss_fn, sample_batch, steps=300, lr=0.05, ema_decay=0.9,
                      device="cpu", on_step=seen.append)
    assert [s["step"] for s in seen] == list(range(1, 301))
    assert seen[-1]["steps"] == 300 and len(hist.losses) == 300
    assert torch.allclose(module.weight.T, w_true, atol=1e-2)
    assert torch.allclose(hist.ema.weight.T, w_true, atol=5e-2)
    assert hist.final_loss < 1e-3 and not module.training


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.1)


def test_ema_warmup_and_average():
    module = nn.Linear(1, 1, bias=False)
    ema = EMA(module, decay=0.5)
    with torch.no_grad():
        module.weight.fill_(1.0)
    start = ema.module.weight.item()
    ema.update(module)  # decay min(0.5, 2 / 11)
    d = 2 / 11
    assert ema.module.weight.item() == pytest.approx(d * start + (1 - d))


def _train_small(gmm, **kw):
    return train_denoiser(gmm, "linear", steps=kw.pop("steps", 20), seed=kw.pop("seed", 0),
                          **{**SMALL, **kw})


def test_seed_gives_identical_models(gmm):
    a, b = _train_small(gmm), _train_small(gmm)
    c = _train_small(gmm, seed=1)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.null_t, c.null_t)


def test_resume_after_crash_matches_uninterrupted_run(gmm, tmp_path):
    full = _train_small(gmm, checkpoint=tmp_path / "full.pt", checkpoint_every=5)

    def crash(info):
        if info["step"] == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_small(gmm, checkpoint=tmp_path / "part.pt", checkpoint_every=5, on_step=crash)
    state = read_checkpoint(tmp_path / "part.pt", STATE_FORMAT)
    assert state["step"] == 10
    steps = []
    resumed = _train_small(gmm, checkpoint=tmp_path / "part.pt", checkpoint_every=5,
                           resume=True, on_step=lambda i: steps.append(i["step"]))
    assert steps == list(range(11, 21))
    for (k, pa), pb in zip(full.state_dict().items(), resumed.state_dict().values(),
                           strict=True):
        assert torch.equal(pa, pb), k


def test_resume_refuses_other_settings(gmm, tmp_path):
    _train_small(gmm, steps=5, checkpoint=tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="different settings"):
        _train_small(gmm, steps=10, lr=1e-4, checkpoint=tmp_path / "s.pt", resume=True)
    # Without the file, resume starts fresh.
    _train_small(gmm, steps=5, checkpoint=tmp_path / "new.pt", resume=True)


def test_resume_extends_a_finished_run(gmm, tmp_path):
    _train_small(gmm, steps=10, checkpoint=tmp_path / "s.pt")
    more = _train_small(gmm, steps=15, checkpoint=tmp_path / "s.pt", resume=True)
    assert more.info["steps"] == 15
    assert read_checkpoint(tmp_path / "s.pt", STATE_FORMAT)["step"] == 15


def test_denoiser_config(gmm):
    cfg = denoiser_config(gmm, "linear")
    assert cfg["kind"] == "mlp" and cfg["num_classes"] == 4 and cfg["shape"] == [8]
    assert cfg["data_m2"] == pytest.approx(float(gmm.x.pow(2).mean()))
    assert denoiser_config(gmm, "linear", conditional=False)["num_classes"] == 0
    digits = load_digits(8)
    assert denoiser_config(digits, "ve")["kind"] == "unet"


def test_loss_of_the_exact_denoiser_is_the_irreducible_error():
    # A model returning the exact E[target | x_t] has a loss equal to the posterior variance
    # of the target; a model off by a constant c gains exactly c^2 / scale^2 more.
    gmm = make_gmm(dim=4, components=2, std=0.3, n=256)
    net = build_model(denoiser_config(gmm, "linear", conditional=False, width=8, depth=1))
    exact = MixtureDenoiser(gmm.mixture, get_schedule("linear"))

    class Exact(nn.Module):
        schedule, prediction = net.schedule, "velocity"
        loss_scale = net.loss_scale

        def __init__(self, shift=0.0):
            super().__init__()
            self.shift = shift

        def forward(self, x, t, y=None, drop_t=None, drop_y=None):
            return exact(x, t.double()) + self.shift

    g = torch.Generator().manual_seed(0)
    x0, _ = gmm.mixture.sample(20000, g)
    t = torch.rand(20000, generator=g, dtype=torch.float64) * 0.9 + 0.05
    eps = torch.randn(20000, 4, generator=g)
    base = denoising_loss(Exact(), x0, t, eps)
    shifted = denoising_loss(Exact(0.1), x0, t, eps)
    expect = (0.01 / net.loss_scale(t).pow(2)).mean()
    assert float(shifted - base) == pytest.approx(float(expect), rel=0.1)


def test_denoiser_learns_the_mixture(gmm):
    # After a short run the x0 prediction is far closer to the exact one than a fresh
    # model's (which is the best Gaussian fit), and the null-t branch is far closer to the
    # exact t-unconditional prediction E[v | x] than a fresh one.
    sch = get_schedule("linear")
    kw = {"conditional": False, "width": 128, "depth": 2, "t_dropout": 0.3}
    fresh = build_model(denoiser_config(gmm, sch, **kw))
    model = train_denoiser(gmm, sch, steps=300, batch_size=128, device="cpu", **kw)
    mix = gmm.mixture
    g = torch.Generator().manual_seed(5)
    x0, _ = mix.sample(256, g)
    t = torch.rand(256, generator=g) * 0.8 + 0.1
    x = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(256, 8, generator=g)
    exact_x0 = mix.x0_pred(x, t.double(), sch)
    exact_null = mix.unconditional_predict(x, sch)
    null = torch.ones(256, dtype=torch.bool)
    with torch.no_grad():
        def x0_err(m):
            return (sch.convert(m(x, t), "velocity", "x0", x, t.double()) - exact_x0).pow(2).mean()

        def null_err(m):
            return (m(x, t, drop_t=null) - exact_null).pow(2).mean()

        assert x0_err(model) < 0.3 * x0_err(fresh)
        assert null_err(model) < 0.5 * null_err(fresh)


@pytest.mark.parametrize("schedule", ["linear", "vp-cosine", "vp-linear", "ve"])
def test_training_works_for_every_schedule(gmm, schedule):
    # A fresh model's loss is about 1 under every schedule (the preconditioning makes the
    # network's residual unit-scale); training must bring it down.
    model = train_denoiser(gmm, schedule, steps=60, **SMALL)
    assert model.info["final_loss"] < 0.9
    x = torch.randn(16, 8) * float(model.schedule.sigma(0.5))
    assert torch.isfinite(model(x, torch.full((16,), 0.5), y=torch.zeros(16, dtype=torch.long),
                                drop_t=torch.rand(16) < 0.5)).all()


def test_t_dropout_trains_the_null_token(gmm):
    with_drop = _train_small(gmm, t_dropout=0.5)
    without = _train_small(gmm, t_dropout=0.0)
    fresh = build_model(with_drop.config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fresh = build_model(with_drop.config)
    assert with_drop.supports_null_t and not without.supports_null_t
    assert not torch.equal(with_drop.null_t, fresh.null_t)
    assert torch.equal(without.null_t, fresh.null_t)
