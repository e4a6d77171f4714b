"""The one atomic writer (noiseshift.io.atomic) and the one checkpoint reader and writer
(noiseshift.io.checkpoints): files appear whole or not at all, with the permissions every
other file gets, and every checkpoint the tool writes goes through them."""

from __future__ import annotations

import os

import pytest
import torch

from noiseshift.data import make_gmm
from noiseshift.errors import CheckpointError
from noiseshift.estimators import ExactOracle
from noiseshift.io import atomic_path, read_checkpoint, save_checkpoint
from noiseshift.io.atomic import install, sibling_temp
from noiseshift.io.checkpoints import Wording, json_entry
from noiseshift.models import build_model, save_model


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_path_all_or_nothing(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and sorted(tmp_path.iterdir()) == [p]
    with atomic_path(p) as tmp:
        assert tmp.parent == p.parent and tmp.name.startswith(".f.txt.")
        tmp.write_text("new")
    assert p.read_text() == "new" and sorted(tmp_path.iterdir()) == [p]


def test_install_without_replace_never_clobbers(tmp_path):
    p = tmp_path / "f.txt"
    tmp = sibling_temp(p, "partial")
    tmp.write_text("mine")
    p.write_text("theirs")
    with pytest.raises(FileExistsError):
        install(tmp, p, replace=False)
    assert p.read_text() == "theirs"
    p.unlink()
    install(tmp, p, replace=False)
    assert p.read_text() == "mine" and not tmp.exists()


def test_every_checkpoint_gets_default_permissions(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    save_checkpoint(tmp_path / "c.pt", "noiseshift.test", {"x": torch.zeros(2)})
    model = build_model({"kind": "mlp", "shape": [4], "schedule": "linear", "width": 8,
                         "depth": 1})
    save_model(model, tmp_path / "m.pt")
    est = ExactOracle(calib_samples=8, calib_points=5).fit(make_gmm(dim=4, n=64), "linear")
    est.save(tmp_path / "sub" / "e.pt")  # was mkstemp: 0600
    for p in (tmp_path / "c.pt", tmp_path / "m.pt", tmp_path / "sub" / "e.pt"):
        assert _mode(p) == _mode(plain) == 0o644, p
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.pt", "m.pt", "plain.txt", "sub"]


def test_read_checkpoint_checks_and_words_problems(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", "noiseshift.test", {"config": '{"a": 1}'})
    ckpt = read_checkpoint(p, "noiseshift.test")
    assert ckpt["format"] == "noiseshift.test" and ckpt["version"] == 1
    assert json_entry(ckpt, "config") == {"a": 1} and json_entry(ckpt, "extra", "{}") == {}
    with pytest.raises(CheckpointError, match="expected 'noiseshift.other'") as e:
        read_checkpoint(p, "noiseshift.other")
    assert e.value.path == str(p) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="version 1"):
        read_checkpoint(p, "noiseshift.test", version=2)
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path, "noiseshift.test")
    words = Wording(missing="no such thing", unreadable="junk ({error})")
    with pytest.raises(CheckpointError, match="no such thing"):
        read_checkpoint(tmp_path / "nope.pt", "noiseshift.test", wording=words)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(CheckpointError, match=r"junk \(\w+\)"):
        read_checkpoint(tmp_path / "junk.pt", "noiseshift.test", wording=words)
