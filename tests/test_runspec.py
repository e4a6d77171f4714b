"""`RunSpec`: a run resolved once from its options, the attributes it writes, how it finds its
baseline (by attributes, not by the samplers' signatures), and `record_with_baseline` with
any backend, opening the file once before anything is written."""

from __future__ import annotations

import dataclasses
import inspect

import h5py
import numpy as np
import pytest
import torch

from noiseshift import sampling
from noiseshift.data import load_data
from noiseshift.errors import NoiseshiftError
from noiseshift.io import TrajectoryWriter, open_trajectories
from noiseshift.models import build_model, describe
from noiseshift.recording import SamplerBackend, look_up, record_with_baseline
from noiseshift.runspec import RunSpec
from noiseshift.sampling import SAMPLER_OPTIONS, SAMPLERS, draw_labels, safe_t_max
from noiseshift.training import denoiser_config

N, STEPS = 12, 4
# The `sampler` attribute of an Euler-Maruyama run as main wrote it (2026-12-03, before
# RunSpec; read back from `noiseshift demo --quick`'s trajectories.h5), at STEPS steps.
OLD_EM = {"name": "euler-maruyama", "steps": STEPS, "t_max": 1.0, "t_min": 0.0,
          "diffusion": 2.0, "final_denoise": True}


def _model(prediction="velocity"):
    """A tiny untrained class-conditional MLP on an 8-d mixture (only plumbing matters)."""
    torch.manual_seed(0)
    data = load_data("gmm", dim=8)
    config = denoiser_config(data, "linear", arch="mlp", width=16, depth=1,
                             prediction=prediction)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _old_run(path, model, name="unguided", *, seed=1, sampler=OLD_EM, guidance=None):
    """A run written with main's attributes through the writer alone (no RunSpec)."""
    labels = draw_labels(model.num_classes, N, seed).numpy()
    with TrajectoryWriter(path, name, n=N, shape=(8,), schedule="linear", sampler=sampler,
                          guidance=guidance or {"kind": "none"}, model=describe(model),
                          seed=seed, labels=labels, overwrite=True) as w:
        for i, t in enumerate((1.0, 0.75, 0.5, 0.25)):
            w.callback({"i": i, "t": t, "x": torch.zeros(N, 8), "x0_pred": None})
        w.finish(torch.zeros(N, 8))


# -- resolution --------------------------------------------------------------------------------

def test_spec_resolves_every_setting_once(model):
    spec = RunSpec.for_model(model, n=N, sampler="ddim", steps=STEPS, seed=3, eta=0.5)
    assert spec.settings == {"name": "ddim", "steps": STEPS, "t_max": 1.0, "t_min": 0.0,
                             "eta": 0.5, "final_denoise": True}
    assert spec.run == "unguided" and not spec.guided and spec.recorded == N
    assert torch.equal(spec.y, draw_labels(model.num_classes, N, 3))
    assert spec.sampler_options() == {"t_max": 1.0, "t_min": 0.0, "eta": 0.5,
                                      "final_denoise": True}
    fixed = RunSpec.for_model(model, n=N, y=2)
    assert fixed.labels == (2,) * N
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.n = 5


def test_eps_models_start_at_the_safe_t_max_in_the_spec():
    eps = _model("eps")
    spec = RunSpec.for_model(eps, n=N, steps=STEPS)
    assert spec.settings["t_max"] == safe_t_max(eps) < 1.0


def test_guidance_names_the_run_and_the_baseline_drops_it(model):
    spec = RunSpec.for_model(model, n=N).with_guidance({"kind": "nag-x-1", "nag": {}})
    assert spec.run == "nag-x-1" and spec.guided
    assert spec.with_guidance({"kind": "nag-x-1"}, "mine").run == "mine"
    base = spec.baseline()
    assert base.run == "unguided" and base.guidance == {"kind": "none"}
    assert dataclasses.replace(base, guidance=spec.guidance, run=spec.run) == spec
    assert spec.baseline_name(["other"]) == "unguided"
    assert spec.baseline_name(["unguided"]) == f"unguided-euler-maruyama-16-seed0-n{N}"


@pytest.mark.parametrize("options, message", [
    (dict(sampler="euler", eta=1.0), "takes no option"),
    (dict(sampler="dpm"), "unknown sampler"),
    (dict(record_n=0), "--record-n"),
    (dict(record_every=0), "--record-every"),
    (dict(y=99), "out of range"),
    (dict(run="a/b"), "bad run name"),
])
def test_bad_options_fail_at_resolution(model, options, message):
    with pytest.raises(NoiseshiftError, match=message):
        RunSpec.for_model(model, n=N, **options)


def test_recorded_subset_is_in_the_sampler_attribute(model):
    spec = RunSpec.for_model(model, n=N, record_n=5, record_every=2)
    assert spec.recorded == 5
    assert spec.attrs()["sampler"]["recorded"] == {"n": N, "samples": 5, "every": 2}


# -- baselines by attributes --------------------------------------------------------------------

def test_a_run_written_by_the_old_code_path_is_the_baseline(model, tmp_path):
    path = tmp_path / "t.h5"
    _old_run(path, model)
    spec = RunSpec.for_model(model, n=N, steps=STEPS, seed=1)
    with open_trajectories(path) as f:
        run = f.run("unguided")
        assert spec.matches(run) and spec.with_guidance({"kind": "g"}).baseline().matches(run)
        for other in (dict(seed=2), dict(steps=8), dict(record_n=5), dict(y=0),
                      dict(diffusion=1.0)):
            kw = {"n": N, "steps": STEPS, "seed": 1, **other}
            assert not RunSpec.for_model(model, **kw).matches(run), other
        assert not RunSpec.for_model(model, n=N - 1, steps=STEPS, seed=1).matches(run)


def test_a_guided_run_is_nobody_s_baseline(model, tmp_path):
    path = tmp_path / "t.h5"
    _old_run(path, model, "g", guidance={"kind": "nag-x-1"})
    spec = RunSpec.for_model(model, n=N, steps=STEPS, seed=1).with_guidance({"kind": "y"})
    assert look_up(path, spec) == (["g"], None)


def test_sampler_options_are_the_samplers_keywords():
    """A keyword renamed in a sampler must be renamed here too (and old runs then stop
    matching on purpose): the recorded keys are not read from the signatures."""
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        kw = {k: p.default for k, p in params.items()
              if p.kind is p.KEYWORD_ONLY and k not in sampling.RUNTIME_KEYWORDS}
        assert kw == SAMPLER_OPTIONS[name], name


def test_renaming_a_sampler_keyword_does_not_change_what_matches(model, tmp_path,
                                                                 monkeypatch):
    path = tmp_path / "t.h5"
    _old_run(path, model)

    def renamed(model, x, ts, *, y=None, callback=None, generator=None, g2_scale=2.0,
                final_denoise=True, noise_sampler=None):
        raise AssertionError("not called")

    monkeypatch.setitem(SAMPLERS, "euler-maruyama", renamed)
    spec = RunSpec.for_model(model, n=N, steps=STEPS, seed=1)
    assert spec.settings == OLD_EM
    with open_trajectories(path) as f:
        assert spec.matches(f.run("unguided"))


# -- one orchestration, any backend ------------------------------------------------------------

class FakeBackend:
    """Draws nothing: writes a run with the spec's attributes, and logs what it was asked."""

    def __init__(self, model):
        self.model, self.drawn = model, []

    def draw(self, spec, path, callback=None):
        self.drawn.append(spec.run)
        _old_run(path, self.model, spec.run, seed=spec.seed, sampler=spec.attrs()["sampler"],
                 guidance=spec.guidance)
        return torch.zeros(spec.n, 8), None


def test_record_with_baseline_records_the_baseline_once(model, tmp_path):
    path, backend = tmp_path / "t.h5", FakeBackend(model)
    spec = RunSpec.for_model(model, n=N, steps=STEPS, seed=1)
    names = []
    rec = record_with_baseline(spec.with_guidance({"kind": "a"}), backend, path,
                               on_baseline=names.append)
    assert (rec.run, rec.baseline, rec.overwrote, names) == ("a", "unguided", False,
                                                            ["unguided"])
    rec = record_with_baseline(spec.with_guidance({"kind": "b"}), backend, path)
    assert rec.baseline == "unguided" and backend.drawn == ["unguided", "a", "b"]
    # other settings: 'unguided' is taken, so the new baseline is named after them
    rec = record_with_baseline(spec.with_guidance({"kind": "a"}), backend, path)
    assert rec.overwrote and rec.baseline == "unguided"
    other = RunSpec.for_model(model, n=N, steps=STEPS, seed=2).with_guidance({"kind": "c"})
    assert record_with_baseline(other, backend, path).baseline == \
        f"unguided-euler-maruyama-{STEPS}-seed2-n{N}"
    third = RunSpec.for_model(model, n=N, steps=STEPS, seed=3)
    with pytest.raises(NoiseshiftError, match="name the unguided baseline needs"):
        record_with_baseline(third.with_guidance({"kind": "c"}, "unguided-euler-maruyama-"
                                                 f"{STEPS}-seed3-n{N}"), backend, path)


def _count_opens(monkeypatch, path) -> list:
    opened = []
    real = h5py.File

    class Counting(real):
        def __init__(self, name, *args, **kw):
            if str(name) == str(path):
                opened.append(str(name))
            super().__init__(name, *args, **kw)

    monkeypatch.setattr(h5py, "File", Counting)
    return opened


def test_the_file_is_read_once_before_anything_is_written(model, tmp_path, monkeypatch):
    """Before RunSpec a guided run opened the file 3-4 times before writing (run_exists,
    find_baseline, baseline_name, the writer). Now one read finds the baseline and the
    run names; the rest are the writer's own two checks per write (io/writer.py: when it is
    made, and again under the folder lock)."""
    path = tmp_path / "t.h5"
    spec = RunSpec.for_model(model, n=N, steps=2, seed=1)
    backend = SamplerBackend(model, model, device="cpu", save_x0=False)
    record_with_baseline(spec, backend, path)
    opened = _count_opens(monkeypatch, path)
    record_with_baseline(spec.with_guidance({"kind": "g"}), backend, path)
    assert len(opened) == 1 + 2  # the baseline was there
    opened.clear()
    other = RunSpec.for_model(model, n=N, steps=2, seed=2).with_guidance({"kind": "h"})
    record_with_baseline(other, backend, path)
    assert len(opened) == 1 + 2 + 2  # the baseline recorded first
    with open_trajectories(path) as f:
        assert set(f.runs) == {"unguided", "g", "h", f"unguided-euler-maruyama-2-seed2-n{N}"}


def test_sampler_backend_records_what_sample_draws(model, tmp_path):
    spec = RunSpec.for_model(model, n=N, steps=3, seed=4, record_n=5)
    rec = record_with_baseline(spec, SamplerBackend(model, device="cpu"), tmp_path / "t.h5")
    plain = sampling.sample(model, N, steps=3, seed=4, device="cpu")
    assert torch.equal(rec.samples, plain)
    with open_trajectories(tmp_path / "t.h5") as f:
        run = f.run("unguided")
        assert run.attrs["sampler"] == spec.attrs()["sampler"] and spec.matches(run)
        assert np.array_equal(run.samples[()], plain[:5].numpy())
