"""Nothing noiseshift loads is ever executed (issue 7, part 4).

A checkpoint whose pickle would create a marker file when unpickled is refused by every loader
with CheckpointError, and the marker never appears. A scan of the source checks that every
`torch.load` passes ``weights_only=True`` and nothing else unpickles or evaluates.
"""

from __future__ import annotations

import ast
import json
import pathlib
import pickle

import pytest
import torch
from make_bad_corpus import write_good
from test_cli_inspect import cli

import noiseshift
from noiseshift.errors import CheckpointError
from noiseshift.estimators import NoiseLevelEstimator
from noiseshift.models import load_model

SOURCE = pathlib.Path(noiseshift.__file__).parent


class Payload:
    """Unpickling this calls Path.touch(marker): code execution in miniature."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def evil_checkpoints(folder: pathlib.Path, marker: pathlib.Path) -> dict[str, pathlib.Path]:
    """The payload hidden in the shapes a loader might meet: torch's zip format with valid
    noiseshift format tags (model and estimator), and a bare pickle."""
    out = {}
    for fmt in ("noiseshift.model", "noiseshift.estimator"):
        p = folder / f"{fmt.split('.')[1]}.pt"
        torch.save({"format": fmt, "version": 1, "config": json.dumps({"kind": "mlp"}),
                    "state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}, p)
        out[fmt] = p
    raw = folder / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "noiseshift.model", "x": Payload(marker)}))
    out["raw"] = raw
    return out


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    files = evil_checkpoints(tmp_path, marker)
    # The payload is live: a plain unpickler runs it (so the checks below can fail).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()
    return files, marker


@pytest.mark.parametrize("which", ["noiseshift.model", "noiseshift.estimator", "raw"])
def test_loaders_refuse_malicious_pickles(evil, which):
    files, marker = evil
    with pytest.raises(CheckpointError) as e:
        load_model(files[which])
    assert e.value.path == str(files[which])
    with pytest.raises(CheckpointError):
        NoiseLevelEstimator.load(files[which])
    assert not marker.exists()


def test_cli_refuses_malicious_pickles(evil, tmp_path, capsys, monkeypatch):
    files, marker = evil
    good = write_good(tmp_path / "good.h5")
    for args in (["sample", "--model", files["noiseshift.model"], "--n", "2", "--steps", "1",
                  "--no-record"],
                 ["estimate", good, "-e", files["noiseshift.estimator"], "-o",
                  tmp_path / "e.h5"],
                 ["sample", "--model", files["raw"], "--n", "2", "--steps", "1", "--no-record"]):
        code, _, err = cli(capsys, monkeypatch, *args)
        assert code == 2 and err.count("\n") == 1 and "checkpoint" in err, err
    assert not marker.exists()


# -- the source: every load is a safe one ------------------------------------------------------

def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                else None
            yield node, owner, name


def _kw(node, key):
    return next((k.value for k in node.keywords if k.arg == key), None)


def test_every_torch_load_is_weights_only():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 10
    found = []
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        for node, owner, name in _calls(tree):
            where = f"{path.relative_to(SOURCE.parent)}:{node.lineno}"
            if owner == "torch" and name == "load":
                found.append(where)
                kw = _kw(node, "weights_only")
                assert isinstance(kw, ast.Constant) and kw.value is True, \
                    f"{where}: torch.load without weights_only=True"
            if owner in ("np", "numpy") and name == "load":
                kw = _kw(node, "allow_pickle")
                assert isinstance(kw, ast.Constant) and kw.value is False, \
                    f"{where}: np.load without allow_pickle=False"
            bare = isinstance(node.func, ast.Name)  # eval(...), not model.eval()
            assert not (bare and name in ("eval", "exec", "__import__")), f"{where}: {name}()"
        # `torch.load` reached another way (an alias, a from-import) would escape the scan.
        assert "from torch import load" not in text and "= torch.load\n" not in text, path
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "marshal", "shelve"} & set(names), \
                    f"{path}: imports an unpickler"
    # Every checkpoint (model, estimator, training state, classifier) goes through the one
    # reader, so the scan finds that one call and nothing else.
    assert found and all(w.startswith("noiseshift/io/checkpoints.py:") for w in found), found
