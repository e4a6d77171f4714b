"""The --data grammar: built-ins, arrays with keys, image folders, latents, and one-line
errors for bad input."""

import h5py
import numpy as np
import pytest
import torch

from noiseshift.data import load_data, parse_data_spec
from noiseshift.errors import NoiseshiftError


def test_builtins_and_photos_split_by_region():
    assert parse_data_spec("digits") == {"name": "digits", "side": 16}
    assert parse_data_spec("gmm", dim=8)["dim"] == 8
    train, test = load_data("photos", size=16), load_data("photos:test", size=16)
    assert train.shape == test.shape == (3, 16, 16) and train.num_classes == 2
    assert len(train) > 3 * len(test) > 0
    assert train.x.min() >= -1 and train.x.max() <= 1
    with pytest.raises(NoiseshiftError, match="unknown built-in data 'cifar'"):
        parse_data_spec("cifar")


def test_arrays_with_a_key_and_bad_arrays(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 2, 4, 4)).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["train"], f["other"] = x, x[:3]
    spec = parse_data_spec(f"{tmp_path / 'a.h5'}:other")
    assert spec["key"] == "other" and load_data(spec).x.shape == (3, 2, 4, 4)
    np.save(tmp_path / "r5.npy", np.zeros((2, 1, 1, 2, 2), np.float32))
    with pytest.raises(NoiseshiftError, match="rank 5"):
        load_data(str(tmp_path / "r5.npy"))
    x[4, 1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(NoiseshiftError, match=r"sample 4, index \[1, 2, 3\]") as e:
        load_data(str(tmp_path / "nan.npy"))
    assert "nan.npy" in str(e.value.path)


def test_latents_need_a_scaling_factor(tmp_path):
    z = np.zeros((4, 4, 8, 8), np.float32)
    np.savez(tmp_path / "bare.npz", latents=z)
    with pytest.raises(NoiseshiftError, match="scaling factor"):
        load_data("latents:" + str(tmp_path / "bare.npz"))
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f["latents"] = z
        f.attrs["scaling_factor"] = 0.18215
    d = load_data("latents:" + str(tmp_path / "z.h5"))
    assert d.shape == (4, 8, 8) and d.spec["scaling_factor"] == pytest.approx(0.18215)


def test_image_folder_mixed_sizes_and_modes_with_labels(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
        tmp_path / "cats" / "a.png")
    image.fromarray(rng.integers(0, 255, (40, 24), dtype=np.uint8)).save(
        tmp_path / "dogs" / "b.jpg")
    image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "dogs" / "c.webp")
    d = load_data(str(tmp_path), size=12)
    assert d.x.shape == (3, 3, 12, 12) and d.num_classes == 2
    assert d.labels.tolist() == [0, 1, 1] and torch.isfinite(d.x).all()
    (tmp_path / "dogs" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(NoiseshiftError, match="cannot read image") as e:
        load_data(str(tmp_path))
    assert str(e.value.path).endswith("bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoiseshiftError, match="no images"):
        load_data(str(tmp_path / "empty"))
