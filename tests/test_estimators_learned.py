"""The learned estimator's network: the gauss head, Haar band noise, any image shape, and
checkpoints saved before those options existed."""

import json

import pytest
import torch
import torch.nn.functional as F

from noiseshift.data import Dataset
from noiseshift.errors import NoiseshiftError
from noiseshift.estimators import LearnedEstimator, NoiseLevelEstimator, forward_noise
from noiseshift.estimators.base import FORMAT, VERSION
from noiseshift.estimators.learned import band_noise, build_network, peaked
from noiseshift.io.checkpoints import read_checkpoint, save_checkpoint
from noiseshift.runtime import generator
from noiseshift.schedules import get_schedule


def test_gauss_head_is_a_gaussian_over_the_bins_when_free_logits_are_zero():
    bins, mu, s = 50, 0.3, 0.04
    out = torch.zeros(2, bins + 2, dtype=torch.float64)
    out[:, -2] = mu - 0.5
    out[:, -1] = torch.log(torch.expm1(torch.tensor(s - 1e-3, dtype=torch.float64)))
    logp = torch.log_softmax(peaked(out, "gauss"), -1)
    grid = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    want = torch.log_softmax(-(grid - mu) ** 2 / (2 * s * s), -1)
    assert torch.allclose(logp, want.expand(2, -1), atol=1e-9)
    assert abs(float((logp.exp() * grid).sum(1)[0]) - mu) < 1e-6
    assert torch.equal(peaked(out, "bins"), out)


def test_band_noise_of_white_noise_reads_its_std_in_every_band():
    x = 0.7 * torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    f = band_noise(x, 2)
    assert f.shape == (4, 12)
    # 3 x 32 x 32 coefficients per band at level 2: the MAD's relative std is about 0.02.
    assert torch.allclose(f.exp(), torch.full_like(f, 0.7), rtol=0.08)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (4, 32, 32), (16, 8, 8),
                                   (3, 64, 64), (3, 256, 256), (1, 3, 5), (64,)])
def test_network_reads_any_shape_with_gradients(shape):
    net = build_network(shape, 20, head="gauss", haar_levels=2)
    x = torch.randn(2, *shape, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 20) and torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.logsumexp(1).sum() + out[:, 3].sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_unknown_head_and_too_large_images_are_one_line_errors():
    with pytest.raises(NoiseshiftError, match="unknown estimator head 'softmax'"):
        LearnedEstimator(head="softmax")
    with pytest.raises(NoiseshiftError, match="sides 2..256"):
        build_network((3, 512, 512), 10)


def _smooth_fields(n: int, channels: int, side: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    z = F.interpolate(torch.randn(n, channels, side // 8, side // 8, generator=g), size=side,
                      mode="bilinear", align_corners=False)
    return Dataset(x=(z / z.std()).contiguous(), labels=None, spec={"name": "fields"})


def test_learned_reads_the_noise_level_of_64px_rgb_through_the_stem():
    data = _smooth_fields(256, 3, 64)
    est = LearnedEstimator(bins=20, steps=60, train_batch=32, calib_points=10,
                           calib_samples=16, device="cpu").fit(data, "vp-cosine")
    g = generator(3)
    t = torch.rand(128, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x = forward_noise(data.x[:128], t, get_schedule("vp-cosine"), g)
    err = (est.predict(x)[0].cpu() - t).abs().mean()
    assert err < 0.1, float(err)


def test_a_checkpoint_saved_before_head_and_haar_levels_loads_as_it_was(tmp_path):
    data = _smooth_fields(128, 1, 16)
    est = LearnedEstimator(bins=16, steps=10, train_batch=16, head="bins", haar_levels=0,
                           calib_points=8, calib_samples=8, device="cpu").fit(data, "linear")
    path = est.save(tmp_path / "new.pt")
    payload = read_checkpoint(path, FORMAT, version=VERSION)
    config = json.loads(payload["config"])
    for key in ("head", "haar_levels"):
        del config["params"][key]
    old = tmp_path / "old.pt"
    save_checkpoint(old, FORMAT, {"config": json.dumps(config),
                                  "state_dict": payload["state_dict"]}, VERSION)
    back = NoiseLevelEstimator.load(old, device="cpu")
    assert (back.head, back.haar_levels) == ("bins", 0)
    x = data.x[:8] + 0.3 * torch.randn(8, 1, 16, 16)
    assert torch.equal(back.predict(x)[0], est.predict(x)[0])

