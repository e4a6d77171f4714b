"""Feature spaces from local weights (`--features`): FD and KID equal torchmetrics' with the
same extractor, the linearised CIs track the exact bootstrap, a saved extractor loads
through `report --features export:PATH`, and what cannot load says so in one line."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from test_report import write_digits_runs
from typer.testing import CliRunner

from noiseshift.analysis import quality as Q
from noiseshift.analysis.features import (
    Extractor,
    ExtractorSpace,
    cross_pass,
    kernel_sums_and_radii,
    optional_import,
    parse_features,
    quantise,
)
from noiseshift.cli import app
from noiseshift.errors import NoiseshiftError
from noiseshift.estimation import estimate_file
from noiseshift.report.quality import quality_tables

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


class TinyNet(torch.nn.Module):
    """A random conv net, uint8 images (N, C, H, W) -> 24 float64 features."""

    def __init__(self, channels: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2)
        self.head = torch.nn.Linear(8 * 4, 24)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv(img.float() / 127.5 - 1))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.head(x).double()


def tiny_features(img: torch.Tensor) -> torch.Tensor:
    """`--features module:test_features:tiny_features`."""
    return TinyNet(channels=img.shape[1])(img)


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3, 16, 16), generator=gen) * 1.6 - 0.8 + shift).clamp(-1, 1)


def test_quantise_rounds_like_a_png_writer():
    x = torch.tensor([-1.0, -0.99, 0.0, 0.5, 1.0, 1.5])
    assert quantise(x).tolist() == [0, 1, 128, 191, 255, 255]


def test_fd_and_kid_equal_torchmetrics_with_the_same_extractor():
    # the classes' own modules: torchmetrics.image exports them only beside torch-fidelity
    fid_module = _reference("torchmetrics.image.fid")
    kid_module = _reference("torchmetrics.image.kid")
    net = TinyNet().eval()
    real, fake = _images(240, 0), _images(240, 1, shift=0.15)
    space = ExtractorSpace(real, Extractor(net, "tiny"))
    f = space(fake)
    ours_fd = Q.fd_linear(f, space.reference, n_boot=20).value
    ours_kid = Q.kid(f, space.reference, space.kid_real(), n_boot=20).value

    fid = fid_module.FrechetInceptionDistance(feature=net)
    # one subset of all 240: a permutation, and the unbiased MMD^2 does not depend on order
    with pytest.warns(UserWarning, match="save all extracted features"):
        kid = kid_module.KernelInceptionDistance(feature=net, subsets=1, subset_size=240)
    for metric in (fid, kid):
        metric.update(quantise(real), real=True)
        metric.update(quantise(fake), real=False)
    want_fd = float(fid.compute())
    want_kid = float(kid.compute()[0])
    assert want_fd > 0.01 and want_kid > 1e-4  # different sets: a real distance
    assert ours_fd == pytest.approx(want_fd, rel=1e-6)
    assert ours_kid == pytest.approx(want_kid, rel=1e-6)
    assert Q.fd(f, space.reference, n_boot=5).value == pytest.approx(ours_fd, rel=1e-9)


def test_linearised_cis_track_the_exact_bootstrap():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 6))
    a = rng.normal(size=(600, 6)) * 1.1 + 0.2
    b = a * 0.9 + rng.normal(size=a.shape) * 0.2  # paired with a, closer to the data
    exact, linear = Q.fd(a, real, n_boot=300), Q.fd_linear(a, real, n_boot=300)
    assert linear.value == pytest.approx(exact.value, rel=1e-9)
    width = exact.hi - exact.lo
    assert abs(linear.lo - exact.lo) < 0.25 * width and abs(linear.hi - exact.hi) < 0.25 * width
    d_exact = Q.fd_difference(a, b, real, n_boot=300)
    d_linear = Q.fd_linear_difference(a, b, real, n_boot=300)
    assert d_linear.value == pytest.approx(d_exact.value, rel=1e-9)
    assert d_linear.hi < 0 and d_exact.hi < 0  # b is resolvably better, both ways
    k = Q.kid_difference(a, b, real)
    assert k.value == pytest.approx(Q.kid(b, real).value - Q.kid(a, real).value, rel=1e-9)
    assert k.hi < 0


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOISESHIFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        path = write_digits_runs(tmp_path_factory.mktemp("digits") / "trajectories.h5")
        estimate_file(path, ["variance"])
        yield path


def test_report_with_a_saved_extractor_says_which_space(digits_file, tmp_path):
    script = tmp_path / "tiny.pt2"
    example = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    batch = {"img": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(TinyNet(channels=1).eval(), (example,),
                                          dynamic_shapes=batch), script)
    res = runner.invoke(app, ["report", str(digits_file), "--out", str(tmp_path / "rep"),
                              "--features", f"export:{script}", "--bootstrap", "20",
                              "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["feature_space"] == "exported module tiny.pt2"
    rows = {r["run"]: r for r in rep["summary"]}
    assert rows["unguided"]["kid"] > rows["nag-estimator-1"]["kid"]  # noisier: farther
    assert any("d_kid" in r for r in rep["paired"])
    assert "Sample-quality features: exported module tiny.pt2." in \
        (tmp_path / "rep" / "report.md").read_text()
    plain = runner.invoke(app, ["report", str(digits_file), "--out", str(tmp_path / "r2"),
                                "--bootstrap", "20", "--json"])
    assert json.loads(plain.stdout)["feature_space"].startswith("digits classifier")


def test_module_spec_imports_a_callable():
    ex = parse_features("module:test_features:tiny_features")
    assert ex(_images(5, 0)).shape == (5, 24)
    for bad, words in (("module:nowhere.at_all:fn", "cannot import"),
                       ("module:test_features", "PKG.MOD:FN"),
                       ("pixels:x", "use inception:PATH"),
                       ("inception:/no/such/file.pth", "no such weights file")):
        with pytest.raises(NoiseshiftError, match=words):
            parse_features(bad)


def test_inception_loads_through_torch_fidelity(tmp_path, monkeypatch):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not read by the stand-in")
    seen = {}

    class FeatureExtractorInceptionV3(torch.nn.Module):  # torch-fidelity's signature
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            seen.update(name=name, features=features_list, path=feature_extractor_weights_path)

        def forward(self, x):
            seen["input"] = (x.dtype, tuple(x.shape[1:]))
            return (torch.zeros(len(x), 2048),)

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    stand_in = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    stand_in.FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3
    monkeypatch.setitem(sys.modules, stand_in.__name__, stand_in)
    ex = parse_features(f"inception:{weights}")
    assert ex(torch.zeros(3, 1, 16, 16)).shape == (3, 2048)
    assert seen == {"name": "inception-v3-compat", "features": ["2048"], "path": str(weights),
                    "input": (torch.uint8, (3, 16, 16))}  # grey as 3 channels, uint8


def test_missing_libraries_are_one_line(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 1024)}, weights)
    for name in ("torch_fidelity", "torch_fidelity.feature_extractor_inceptionv3", "timm"):
        monkeypatch.setitem(sys.modules, name, None)  # as if absent, imported before or not
    with pytest.raises(NoiseshiftError, match="needs torch_fidelity.*pip install torch-fidelity"):
        parse_features(f"inception:{weights}")
    with pytest.raises(NoiseshiftError, match="needs timm.*pip install timm"):
        parse_features(f"dinov2:{weights}")



def test_features_with_nothing_to_measure_is_one_line(digits_file, tmp_path):
    spec = "module:test_features:tiny_features"
    for args, words in (
            ([str(digits_file), "--data", "digits", "--size", "8"], "no run has samples of "
             "the data's shape"),
            ([str(digits_file), "--no-quality"], "which --no-quality turns off")):
        res = runner.invoke(app, ["report", *args, "--out", str(tmp_path / "rep"),
                                  "--features", spec])
        assert res.exit_code == 2, res.output
        assert words in res.output and f"--features {spec}" in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    # runs whose data is unknown (or does not load): no quality without --features, an error
    # with it
    assert quality_tables([], None, None, 20, 0, [], None) == ({}, {}, {}, None)
    with pytest.raises(NoiseshiftError, match=f"--features {spec}: .*runs do not name data"):
        quality_tables([], None, None, 20, 0, [], None, features=spec)


def test_one_gram_pass_gives_the_knn_radii_coverage_and_kernel_sums():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(300, 40)), rng.normal(size=(250, 40)) * 1.2 + 0.1
    sums, radii = kernel_sums_and_radii(real, 3)
    assert np.allclose(radii, Q._knn_radii(real, 3), rtol=1e-9)
    assert np.allclose(sums, ((real @ real.T / 40 + 1) ** 3).sum(1), rtol=1e-12)
    assert Q.kernel_mean_offdiagonal(real, sums) == pytest.approx(
        Q.kernel_mean_offdiagonal(real), rel=1e-12)
    own, fake_radii = kernel_sums_and_radii(fake, 3)
    cross, in_real, in_fake = cross_pass(fake, real, radii, fake_radii)
    want_real, want_fake = Q._coverage(real, fake, 3, radii)
    assert 0 < want_real.sum() < want_real.size and 0 < want_fake.sum() < want_fake.size
    assert (in_real == want_real).all() and (in_fake == want_fake).all()
    yy = Q.kernel_mean_offdiagonal(real)
    assert np.allclose(Q._kid_values(fake, real, yy, (own, cross)),
                       Q._kid_values(fake, real, yy), rtol=1e-12)


def test_blocked_self_pass_and_the_cholesky_fd_match_the_direct_forms():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(130, 12)) ** 2
    sums, radii = kernel_sums_and_radii(x, 3, block=40)  # 4 row blocks, one ragged
    assert np.allclose(sums, ((x @ x.T / 12 + 1) ** 3).sum(1), rtol=1e-12)
    assert np.allclose(radii, Q._knn_radii(x, 3), rtol=1e-9)
    fake = rng.normal(size=(90, 12)) + 0.3
    # full rank (Cholesky), and rank 7 < 12 (the eigh fallback; square roots of its ~1e-16
    # eigenvalues differ at ~1e-8 between any two exact methods)
    for real, rel in ((x, 1e-10), (x[:8], 1e-6)):
        want = Q.frechet_distance(fake, real)
        assert Q.fd_linear(fake, real, n_boot=5).value == pytest.approx(want, rel=rel)
        assert Q.fd(fake, real, n_boot=5).value == pytest.approx(want, rel=rel)


@pytest.mark.parametrize("radius", [0.3, 3.0])  # few reals per ball (sparse), most (dense)
def test_recall_of_a_resample_counts_the_reals_its_balls_cover(radius):
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(200, 2)), rng.normal(size=(150, 2))
    in_fake = np.linalg.norm(fake[:, None] - real[None], axis=2) <= radius
    i = rng.integers(0, 150, 150)
    want = np.mean([any(in_fake[j, r] for j in set(i.tolist())) for r in range(200)])
    assert Q._recall(in_fake)(i) == pytest.approx(want, abs=1e-12)
    assert (in_fake.mean() > 0.05) == (radius > 1)


# -- against the reference implementations, where they import (the `features` extra) -----------

def _reference(module: str):
    try:
        name = module.split(".")[0].replace("_", "-")
        return optional_import(module, f"{name} for the reference check")
    except NoiseshiftError as e:
        pytest.skip(str(e))


def random_fid_inception(path):
    """torch-fidelity's FID Inception-v3 with random weights (its own initialisation), saved
    where `--features inception:PATH` loads it: the network, not the weights, is under test."""
    fe = _reference("torch_fidelity.feature_extractor_inceptionv3")
    torch.manual_seed(0)
    cls = fe.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp:  # its constructor loads weights: none yet
        mp.setattr(cls, "load_state_dict", lambda self, state: None)
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        net = cls("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))


class Images(torch.utils.data.Dataset):
    """uint8 images as torch-fidelity reads a dataset: one tensor per item."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_inception_features_equal_torch_fidelitys_own_pipeline(tmp_path):
    utils = _reference("torch_fidelity.utils")
    net = random_fid_inception(tmp_path / "inception.pth")
    x = _images(3, 0)[:, :1]  # grey: repeated to RGB on the way in
    ours = parse_features(f"inception:{tmp_path / 'inception.pth'}")(x)
    theirs = utils.get_featuresdict_from_dataset(
        Images(quantise(x).expand(-1, 3, -1, -1)), net, batch_size=2, cuda=False,
        save_cpu_ram=True, verbose=False)["2048"].double().numpy()
    assert ours.shape == (3, 2048) and theirs.std() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)


def test_fd_and_kid_equal_torch_fidelitys_metrics():
    fid = _reference("torch_fidelity.metric_fid")
    kid = _reference("torch_fidelity.metric_kid")
    rng = np.random.default_rng(6)
    real = np.abs(rng.normal(size=(300, 64)))
    fake = np.abs(rng.normal(size=(300, 64)) * 1.1 + 0.1)
    want_fd = fid.fid_statistics_to_metric(fid.fid_features_to_statistics(torch.from_numpy(fake)),
                                           fid.fid_features_to_statistics(torch.from_numpy(real)),
                                           verbose=False)["frechet_inception_distance"]
    # one subset of all 300: a permutation, and the unbiased MMD^2 does not depend on order
    want_kid = kid.kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake),
                                          kid_subsets=1, kid_subset_size=300,
                                          verbose=False)["kernel_inception_distance_mean"]
    assert want_fd > 0.1 and want_kid > 1e-3
    assert Q.fd_linear(fake, real, n_boot=5).value == pytest.approx(want_fd, rel=1e-6)
    assert Q.kid(fake, real, n_boot=5).value == pytest.approx(want_kid, rel=1e-6)


def test_dinov2_loads_a_timm_checkpoint_and_takes_its_cls_token(tmp_path):
    timm = _reference("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                            img_size=224).eval()
    torch.save(net.state_dict(), tmp_path / "dino.pth")
    x = _images(2, 0)
    ours = parse_features(f"dinov2:{tmp_path / 'dino.pth'}")(x)
    img = torch.nn.functional.interpolate(quantise(x).float() / 255, size=(224, 224),
                                          mode="bicubic", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        want = net((img - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).double().numpy()
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-9)
