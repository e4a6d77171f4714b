"""`noiseshift sample` with guidance: guided runs recorded beside their unguided baseline,
and option errors from the command line."""

import json

import pytest
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.data import make_gmm
from noiseshift.errors import NoiseshiftError
from noiseshift.guidance import DEFAULT_INTERVAL, DEFAULT_NAG_MODE
from noiseshift.io import open_trajectories
from noiseshift.models import save_model
from noiseshift.training import train_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny MLPs on a 32-d mixture: with and without noise-condition dropout."""
    folder = tmp_path_factory.mktemp("models")
    data = make_gmm(dim=32, components=4, seed=0, n=512)
    paths = {}
    for name, p in (("nag", 0.3), ("plain", 0.0)):
        m = train_denoiser(data, "linear", steps=10, batch_size=32, width=32, depth=1,
                           t_dropout=p, conditional=False, ema_decay=None)
        paths[name] = str(save_model(m, folder / f"{name}.pt"))
    return paths


def _cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res


def test_sample_records_guided_runs_beside_their_baseline(tiny_models, tmp_path):
    f = tmp_path / "t.h5"
    common = ["--model", tiny_models["nag"], "--n", 8, "--steps", 3, "--record", f, "--json"]
    out = json.loads(_cli("sample", *common, "--nag-scale", 1, "--nag-mode", "cf").stdout)
    assert out["run"] == "nag-cf-1" and out["baseline"] == "unguided"
    out = json.loads(_cli("sample", *common, "--nag-scale", 0.5, "--nag-mode", "estimator",
                          "--estimator", "oracle", "--guidance-interval", "0.1,0.7").stdout)
    assert out["run"] == "nag-estimator-0.5@0.1-0.7" and out["baseline"] == "unguided"
    _cli("sample", *common, "--eps-scale", "1.01", "--time-shift", "0.2,0.3")
    _cli("sample", *common[:-1], "--seed", 1, "--nag-scale", 1, "--nag-mode", "cf")
    with open_trajectories(f) as tf:
        runs = {r.name: r.attrs for r in tf}
    assert set(runs) == {"unguided", "nag-cf-1", "nag-estimator-0.5@0.1-0.7",
                         "eps-scale-1.01+time-shift-0.2-0.3",
                         "unguided-euler-maruyama-3-seed1-n8"}
    assert runs["unguided"]["guidance"] == {"kind": "none"}
    nag = runs["nag-estimator-0.5@0.1-0.7"]["guidance"]["nag"]
    assert nag["mode"] == "estimator" and nag["interval"] == [0.1, 0.7]
    assert nag["estimator"]["name"] == "oracle"
    # The seed-1 run replaced nag-cf-1 (same name) and got a seed-1 baseline of its own.
    assert runs["nag-cf-1"]["seed"] == runs["unguided-euler-maruyama-3-seed1-n8"]["seed"] == 1


def test_cli_nag_mode_default_is_the_library_default(tiny_models, tmp_path):
    """`noiseshift sample --nag-scale W` guides as `build_guidance(model, nag_scale=W)` does:
    the same mode (DEFAULT_NAG_MODE) over the same interval; --help names it."""
    out = json.loads(_cli("sample", "--model", tiny_models["plain"], "--n", 4, "--steps", 2,
                          "--nag-scale", 1.5, "--estimator", "oracle", "--record",
                          tmp_path / "t.h5", "--json").stdout)
    assert DEFAULT_NAG_MODE == "estimator-step"
    assert out["run"] == f"nag-{DEFAULT_NAG_MODE}-1.5"
    assert out["guidance"]["nag"]["mode"] == DEFAULT_NAG_MODE
    assert out["guidance"]["nag"]["interval"] == list(DEFAULT_INTERVAL)
    res = CliRunner().invoke(app, ["sample", "--help"], env={"COLUMNS": "200"})
    assert f"Default {DEFAULT_NAG_MODE}." in " ".join(res.stdout.split())


def test_sample_guidance_errors(tiny_models, tmp_path):
    base = ["sample", "--model", tiny_models["plain"], "--n", 4, "--steps", 2, "--no-record"]
    with pytest.raises(NoiseshiftError, match="--t-dropout.*--nag-mode estimator"):
        _cli(*base, "--nag-scale", 1, "--nag-mode", "cf")
    with pytest.raises(NoiseshiftError, match="--time-shift"):
        _cli(*base, "--time-shift", "0.1")
    with pytest.raises(NoiseshiftError, match="--guidance-interval"):
        _cli(*base, "--nag-scale", 1, "--estimator", "oracle", "--guidance-interval", "x,y")
    with pytest.raises(NoiseshiftError, match="class-conditional"):
        _cli(*base, "--cfg-scale", 1)
