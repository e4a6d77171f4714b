"""noiseshift.integrations.k_diffusion driven by k-diffusion's own sample_* functions.

k-diffusion's package imports its image-evaluation modules (torchvision, clip, clean-fid) at
import time. The PyPI torchvision wheels are CUDA builds that do not load next to a CPU-only
torch, so where those cannot be imported they are replaced by empty stand-ins before
k-diffusion is imported: the samplers and denoiser wrappers tested here never call them.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import numpy as np
import pytest
import torch
from helpers import image_gmm

from noiseshift.errors import NoiseshiftError
from noiseshift.integrations.k_diffusion import KDiffusionRecorder, NAGDenoiser
from noiseshift.integrations.mixture_unet import MixtureUNet
from noiseshift.io import open_trajectories
from noiseshift.pretrained import get_estimator
from noiseshift.schedules import get_schedule

SHAPE = (1, 8, 8)
STAND_INS = ("torchvision", "clip", "cleanfid")
pytestmark = pytest.mark.usefixtures("one_thread")


def _placeholder(attr: str):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return type(attr, (), {})


def _stand_in(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    subs = {"torchvision": ["transforms", "transforms.functional"],
            "cleanfid": ["inception_torchscript"]}.get(name, [])
    for full in [name] + [f"{name}.{s}" for s in subs]:
        mod = types.ModuleType(full)
        mod.__path__ = []
        mod.__getattr__ = _placeholder
        sys.modules[full] = mod
        parent, _, leaf = full.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, mod)


def _import_k_diffusion():
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed: pip install 'noiseshift[k-diffusion]'")
    stood_in = []
    for name in STAND_INS:
        try:
            importlib.import_module(name)
        except Exception:  # missing, or a CUDA torchvision next to a CPU torch
            _stand_in(name)
            stood_in.append(name)
    module = importlib.import_module("k_diffusion")
    for name in stood_in:  # k-diffusion keeps its references; nothing else sees them
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    return module


K = _import_k_diffusion()


@pytest.fixture(scope="module")
def gmm():
    return image_gmm(SHAPE)


@pytest.fixture(scope="module")
def eps_model(gmm):
    """k-diffusion's DiscreteEpsDDPMDenoiser around the mixture's exact eps UNet."""
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    unet = MixtureUNet(gmm.mixture, SHAPE, alphas_cumprod=alphas)
    return K.external.DiscreteEpsDDPMDenoiser(lambda x, t: unet(x, t).sample,
                                              alphas.float(), quantize=False)


@pytest.fixture(scope="module")
def oracle(gmm):
    return get_estimator("oracle", gmm, "vp-cosine", device="cpu")


def edm_model(gmm):
    """An exact EDM (VE) denoiser: x = x0 + sigma eps -> E[x0 | x]."""
    cos = get_schedule("vp-cosine")

    def denoise(x, sigma):
        s = float(sigma.reshape(-1)[0])
        t = torch.full((x.shape[0],), 2 / math.pi * math.atan(s), dtype=torch.float64)
        return gmm.mixture.x0_pred(x / math.sqrt(1 + s * s), t, cos).to(x.dtype)
    return denoise


SAMPLERS = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_euler_ancestral"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_recorder_matches_the_callback_and_does_not_perturb(tmp_path, eps_model, sampler):
    fn = getattr(K.sampling, sampler)
    sigmas = eps_model.get_sigmas(6)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    seen = []
    torch.manual_seed(1)
    plain = fn(eps_model, x, sigmas, disable=True, callback=lambda info: seen.append(
        {k: v.clone() if torch.is_tensor(v) else v for k, v in info.items()}))
    rec = KDiffusionRecorder(tmp_path / "t.h5", convention="eps", sampler=sampler, seed=0,
                             steps=6)
    with rec:
        torch.manual_seed(1)
        out = fn(eps_model, x, sigmas, disable=True, callback=rec)
        rec.finish(out)
    assert torch.equal(out, plain)
    with open_trajectories(tmp_path / "t.h5") as tf:
        run = tf.run("unguided")
        assert run.complete and run.num_steps == len(seen) == 6
        sig = np.array([float(s["sigma_hat"]) for s in seen])
        np.testing.assert_allclose(run.t, 2 / np.pi * np.arctan(sig), rtol=0, atol=1e-12)
        want = np.stack([(s["x"] / math.sqrt(1 + float(s["sigma_hat"]) ** 2)).numpy()
                         for s in seen])
        np.testing.assert_allclose(run.states[:], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(run.read_samples(), out.numpy())
        assert run.attrs["schedule"] == {"name": "vp-cosine"}
        assert run.attrs["model"]["convention"] == "eps"


def test_edm_convention_records_ve_states_unchanged(tmp_path, gmm):
    sigmas = K.sampling.get_sigmas_karras(5, 0.002, 80.0)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    with KDiffusionRecorder(tmp_path / "t.h5", convention="edm", max_samples=2,
                            every=2) as rec:
        out = K.sampling.sample_dpmpp_2m(edm_model(gmm), x, sigmas, disable=True,
                                         callback=rec)
        rec.finish(out)
    with open_trajectories(tmp_path / "t.h5") as tf:
        run = tf.run("unguided")
        assert run.attrs["schedule"] == {"name": "ve", "sigma_min": 0.002, "sigma_max": 80.0}
        assert run.n == 2 and run.num_steps == 3  # steps 0, 2, 4 of 5
        want = np.log(sigmas[[0, 2, 4]].double().numpy() / 0.002) / math.log(80 / 0.002)
        np.testing.assert_allclose(run.t, want, atol=1e-7)
        np.testing.assert_array_equal(run.states[0], x[:2].numpy())
        assert run.read_samples().shape == (2, *SHAPE)


def test_nag_denoiser_adds_the_estimator_gradient(eps_model, oracle):
    """mode 'estimator': denoised + w sigma^2 / sqrt(1 + sigma^2) grad log p(t|x) at the VP
    state, written out here by hand; scale 0 is the wrapped denoiser bit for bit."""
    sigma = torch.full((5,), 2.0)
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3)) * 2.0
    base = eps_model(x, sigma)
    assert torch.equal(NAGDenoiser(eps_model, oracle, 0.0, convention="eps")(x, sigma), base)
    w = 1.5
    guided = NAGDenoiser(eps_model, oracle, w, convention="v", mode="estimator",
                         interval=(0.0, 1.0))
    t = torch.full((5,), 2 / math.pi * math.atan(2.0), dtype=torch.float64)
    g = oracle.grad_log_posterior((x / math.sqrt(5.0)).double(), t)
    want = base.double() + w * 4.0 / math.sqrt(5.0) * g.double()
    torch.testing.assert_close(guided(x, sigma).double(), want, rtol=1e-4, atol=1e-5)
    assert guided.guidance["kind"] == "nag-estimator-1.5@0-1"


def test_default_mode_moves_denoised_along_the_predicted_noise(eps_model, oracle):
    """mode 'estimator-step' (the default): denoised moves along the wrapped denoiser's
    predicted noise (x - denoised) / sigma, row by row, and only where the state reads
    off its level; the k-diffusion wrapper's conversions keep that direction."""
    sigma = torch.full((6,), 1.5)
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(4)) * 1.5
    x[:3] *= 1.3  # noisier than scheduled: these rows read a larger t
    base = eps_model(x, sigma).double()
    guided = NAGDenoiser(eps_model, oracle, 1.5, convention="eps")
    assert guided.guidance["nag"]["mode"] == "estimator-step"
    move = (guided(x, sigma).double() - base).flatten(1)
    eps = ((x.double() - base) / 1.5).flatten(1)
    assert (move.norm(dim=1) > 0).all()
    cos = (move * eps).sum(1) / (move.norm(dim=1) * eps.norm(dim=1))
    torch.testing.assert_close(cos.abs(), torch.ones(6, dtype=torch.float64), rtol=0,
                               atol=1e-4)
    # Too much noise: the step c < 0 moves denoised against the predicted noise, so the
    # sampler's next state, between x and denoised, keeps less of it.
    assert (cos[:3] < 0).all()


@pytest.mark.parametrize("mode", [None, "estimator-noise"])
def test_guided_denoiser_drives_k_diffusion_samplers(tmp_path, eps_model, oracle, mode):
    """The default mode (estimator-step) and estimator-noise, through dpmpp_2m."""
    sigmas = eps_model.get_sigmas(8)
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    plain = K.sampling.sample_dpmpp_2m(eps_model, x, sigmas, disable=True)
    nag = NAGDenoiser(eps_model, oracle, 2.0, convention="eps",
                      **({} if mode is None else {"mode": mode}))
    name = f"nag-{mode or 'estimator-step'}-2"
    assert nag.guidance["kind"] == name
    rec = KDiffusionRecorder(tmp_path / "t.h5", nag.guidance["kind"], convention="eps",
                             guidance=nag.guidance)
    with rec:
        out = K.sampling.sample_dpmpp_2m(nag, x, sigmas, disable=True, callback=rec)
        rec.finish(out)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    with open_trajectories(tmp_path / "t.h5") as tf:
        assert tf.run(name).attrs["guidance"]["nag"]["scale"] == 2.0


def test_bad_inputs_are_one_line_errors(tmp_path, eps_model, oracle, gmm):
    with pytest.raises(NoiseshiftError, match="unknown sigma convention 'karras'"):
        KDiffusionRecorder(tmp_path / "t.h5", convention="karras")
    with pytest.raises(NoiseshiftError, match="null-t branch.*k-diffusion"):
        NAGDenoiser(eps_model, oracle, 1.0, convention="eps", mode="cf-read")
    with pytest.raises(NoiseshiftError, match="trained for the vp-cosine schedule.*onto ve"):
        NAGDenoiser(eps_model, oracle, 1.0, convention="edm")
    rec = KDiffusionRecorder(tmp_path / "t.h5", convention="edm")
    with pytest.raises(NoiseshiftError, match="outside the ve schedule's range"):
        rec({"i": 0, "x": torch.zeros(1, *SHAPE), "sigma": torch.tensor(157.0),
             "denoised": torch.zeros(1, *SHAPE)})
    assert not (tmp_path / "t.h5").exists()
