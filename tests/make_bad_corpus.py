"""Build the bad-input corpus: small trajectory files, each broken in one way.

    python tests/make_bad_corpus.py tests/data/bad     # write the corpus into a folder

The tests call `build(folder)` to write it into a temporary folder, so the repository holds
only this script. Every case is a file that `noiseshift inspect` (and `estimate`, `report`)
must refuse with one line naming the file and the problem (`expect`, a regular expression),
exit code 2, and the file's bytes unchanged. A case with ``expect=None`` is a valid file that
a particular command must refuse for another reason (see `CASES`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

N, DIM, S = 4, 8, 5
DATA = {"name": "gmm", "dim": DIM}  # what `estimate` builds its built-in estimators from


@dataclass(frozen=True)
class Case:
    name: str
    expect: str | None  # regex the one-line error must match; None: the file itself is valid
    note: str


def good_arrays(steps: int = S, n: int = N, dim: int = DIM, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = np.linspace(1.0, 0.0, steps + 1)[:-1]
    states = rng.standard_normal((steps, n, dim)).astype(np.float32)
    return {"t": t, "states": states, "x0_pred": 0.5 * states,
            "samples": rng.standard_normal((n, dim)).astype(np.float32),
            "labels": np.arange(n, dtype=np.int64) % 2}


def write_good(path: Path, *, run: str = "baseline", mutate=None, root=None, seed: int = 0,
               dim: int = DIM, data_dim: int = DIM, runs: tuple[str, ...] = ()) -> Path:
    """A valid file written with plain h5py (as an outside writer would), optionally broken
    by `mutate(run_group, arrays)` (called before the datasets are written: it edits the
    arrays dict or the group) or `root(file)`."""
    arrays = good_arrays(dim=dim, seed=seed)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "noiseshift.trajectories"
        f.attrs["version"] = 1
        for name in (run, *runs):
            g = f.create_group(f"runs/{name}")
            g.attrs["schedule"] = json.dumps({"name": "linear"})
            g.attrs["sampler"] = json.dumps({"name": "euler", "steps": S})
            g.attrs["guidance"] = json.dumps({"kind": "none"})
            g.attrs["model"] = json.dumps({"data": {**DATA, "dim": data_dim}})
            g.attrs["seed"] = 0
            g.attrs["created"] = "2025-01-01T00:00:00+00:00"
            g.attrs["complete"] = True
            a = dict(arrays)
            if mutate is not None and name == run:
                mutate(g, a)
            for key, val in a.items():
                if val is not None:
                    chunks = (1, *val.shape[1:]) if key in ("states", "x0_pred") and \
                        val.ndim > 1 and val.size else None
                    g.create_dataset(key, data=val, chunks=chunks)
        if root is not None:
            root(f)
    return path


def _set(key, value):
    def mutate(g, a):
        a[key] = value(a) if callable(value) else value
    return mutate


def _attr(key, value):
    def mutate(g, a):
        if value is None:
            del g.attrs[key]
        else:
            g.attrs[key] = value
    return mutate


def _nan_at(key, where, value):
    def mutate(g, a):
        arr = a[key].copy()
        arr[where] = value
        a[key] = arr
    return mutate


def _external(folder: Path):
    def mutate(g, a):
        other = folder / "aux" / "elsewhere.h5"
        other.parent.mkdir(exist_ok=True)
        with h5py.File(other, "w") as f:
            f["states"] = a["states"]
        a["states"] = None
        g["states"] = h5py.ExternalLink(f"aux/{other.name}", "states")
    return mutate


def _root_attr(key, value):
    def root(f):
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value
    return root


def _truncate(src: Path, dst: Path, keep) -> None:
    data = src.read_bytes()
    n = keep(len(data))
    dst.write_bytes(data[:n])


# name -> (how to make it, expected problem, what it is)
def build(folder) -> dict[str, tuple[Path, Case]]:
    """Write every case into `folder`; returns {name: (path, case)}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, Case]] = {}

    def add(name, expect, note, make):
        path = folder / f"{name}.h5"
        make(path)
        out[name] = (path, Case(name, expect, note))

    good = write_good(folder / "good.h5")
    out["good"] = (good, Case("good", None, "a valid file (reference)"))
    add("not_hdf5", r"not an HDF5 file", "a text file named .h5",
        lambda p: p.write_text("time,value\n0,1\n"))
    add("empty", r"file is empty", "zero bytes", lambda p: p.write_bytes(b""))
    for label, keep in (("truncated_superblock", lambda n: 60),
                        ("truncated_half", lambda n: n // 2),
                        ("truncated_tail", lambda n: n - 100)):
        add(label, r"truncated|damaged HDF5 file", f"good.h5 cut at {label.split('_')[1]}",
            lambda p, keep=keep: _truncate(good, p, keep))
    add("plain_hdf5", r"not a noiseshift file", "an HDF5 file of something else",
        lambda p: _plain_hdf5(p))
    add("wrong_format", r"wrong format 'something\.else'", "format attribute of another tool",
        lambda p: write_good(p, root=_root_attr("format", "something.else")))
    add("future_version", r"format version 2 is newer", "version = 2",
        lambda p: write_good(p, root=_root_attr("version", 2)))
    add("no_runs", r"no /runs group", "format attributes but no /runs",
        lambda p: _no_runs(p))
    add("missing_t", r"no `t` dataset", "run without t",
        lambda p: write_good(p, mutate=_set("t", None)))
    add("missing_states", r"no `states` dataset", "run without states",
        lambda p: write_good(p, mutate=_set("states", None)))
    add("t_not_decreasing", r"t is not decreasing", "t increasing",
        lambda p: write_good(p, mutate=_set("t", lambda a: a["t"][::-1].copy())))
    add("t_outside", r"t outside \[0, 1\]", "t from 1.5",
        lambda p: write_good(p, mutate=_set("t", lambda a: a["t"] + 0.5)))
    add("length_mismatch", r"length mismatch: t has 4 steps but states has 5", "t shorter",
        lambda p: write_good(p, mutate=_set("t", lambda a: a["t"][:4])))
    add("nan_states", r"states contain NaN or Inf at step 2", "one NaN in step 2",
        lambda p: write_good(p, mutate=_nan_at("states", (2, 1, 3), np.nan)))
    add("inf_states", r"states contain NaN or Inf at step 4", "one -Inf in the last step",
        lambda p: write_good(p, mutate=_nan_at("states", (4, 0, 0), -np.inf)))
    add("nan_x0_pred", r"x0_pred contain NaN or Inf", "NaN in x0_pred",
        lambda p: write_good(p, mutate=_nan_at("x0_pred", (0, 0, 0), np.nan)))
    add("nan_samples", r"samples contain NaN or Inf", "NaN in the final samples",
        lambda p: write_good(p, mutate=_nan_at("samples", (1, 2), np.nan)))
    add("int_states", r"states have dtype int64", "integer states",
        lambda p: write_good(p, mutate=_set("states", lambda a: a["states"].astype(np.int64))))
    add("complex_states", r"states have dtype complex64", "complex states",
        lambda p: write_good(p, mutate=_set("states",
                                            lambda a: a["states"].astype(np.complex64))))
    add("zero_samples", r"zero samples", "N = 0",
        lambda p: write_good(p, mutate=_zero_samples))
    add("bad_json", r"attribute `sampler` is not valid JSON", "sampler attr not JSON",
        lambda p: write_good(p, mutate=_attr("sampler", "{'name': 'euler'}")))
    add("unknown_schedule", r"unknown schedule 'cosine-ish'", "schedule not a known family",
        lambda p: write_good(p, mutate=_attr("schedule", json.dumps({"name": "cosine-ish"}))))
    add("missing_complete", r"no `complete` attribute", "complete attr missing",
        lambda p: write_good(p, mutate=_attr("complete", None)))
    add("no_samples", r"complete run without `samples`", "complete but no samples",
        lambda p: write_good(p, mutate=_set("samples", None)))
    add("float_labels", r"labels must be \(4,\) integers", "labels as floats",
        lambda p: write_good(p, mutate=_set("labels", lambda a: a["labels"] * 1.0)))
    add("external_link", r"states is an external link", "states link to another file",
        lambda p: write_good(p, mutate=_external(folder)))
    add("shape_mismatch", None, "valid, but dim 9 while its model's data (and so the "
        "estimator) has dim 8", lambda p: write_good(p, dim=9, data_dim=8))
    return out


def _plain_hdf5(p: Path) -> None:
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(10.0)


def _no_runs(p: Path) -> None:
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "noiseshift.trajectories"
        f.attrs["version"] = 1


def _zero_samples(g, a):
    for key in ("states", "x0_pred"):
        a[key] = a[key][:, :0]
    a["samples"] = a["samples"][:0]
    a["labels"] = a["labels"][:0]


def checkpoints(folder) -> dict[str, Path]:
    """Estimator checkpoints for the corpus's data: `oracle` (fits every good file),
    `other_schedule` (the same data under vp-cosine), and `not_checkpoint` (a text file)."""
    from noiseshift.pretrained import get_estimator

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, schedule in (("oracle", "linear"), ("other_schedule", "vp-cosine")):
        est = get_estimator("oracle", DATA, schedule, device="cpu")
        out[name] = Path(est.save(folder / f"{name}.pt"))
    out["not_checkpoint"] = folder / "not_checkpoint.pt"
    out["not_checkpoint"].write_text("weights: none\n")
    return out


def tiny_model(folder, dim: int = 16) -> Path:
    """A small MLP denoiser checkpoint for `dim`-vectors (seeded random weights: tests of
    file handling need a model that runs, not a good one)."""
    import torch

    from noiseshift.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model({"kind": "mlp", "shape": [dim], "schedule": "linear", "width": 64,
                         "depth": 2, "data": {"name": "gmm", "dim": dim}})
    return save_model(model, Path(folder) / "tiny.pt")


# -- the newer surfaces: arrays and image folders for --data, pipeline and VAE folders,
# decompose's trajectory files (issue 21). {name: (path, regex the one line must match)}.

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _h5_latents(path: Path, scale) -> Path:
    with h5py.File(path, "w") as f:
        f["latents"] = np.zeros((4, 2, 4, 4), np.float32)
        f.attrs["scaling_factor"] = scale
    return path


def bad_arrays(folder) -> dict[str, tuple[Path, str]]:
    """Array files and latents that every --data reader must refuse in one line."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.zeros((4, 1, 8, 8), np.float32)
    cases = {
        "nan": (x.copy(), r"NaN/Inf"), "overflow": (np.full((4, 64), 1e300), r"as float32"),
        "zero_width": (np.zeros((4, 0)), r"no empty dimension"),
        "one_sample": (np.zeros((1, 64), np.float32), r"N >= 2"),
        "rank1": (np.zeros(64, np.float32), r"rank 1"),
        "complex": (np.zeros((4, 64), np.complex64), r"complex64"),
    }
    cases["nan"][0][2, 0, 3, 3] = np.nan
    out = {}
    for name, (arr, expect) in cases.items():
        np.save(folder / f"{name}.npy", arr)
        out[name] = (folder / f"{name}.npy", expect)
    (folder / "text.npy").write_text("1,2,3\n")
    out["text"] = (folder / "text.npy", r"cannot read data")
    out["str_labels"] = (_npz(folder / "str_labels.npz", x=x, labels=np.array(list("abcd"))),
                         r"labels must be non-negative integers")
    out["float_labels"] = (_npz(folder / "float_labels.npz", x=x,
                                labels=np.array([0.5, 1, 2, 3])), r"labels must be")
    out["few_labels"] = (_npz(folder / "few_labels.npz", x=x, labels=np.arange(3)),
                         r"3 labels for 4 samples")
    out["nan_scale"] = (_h5_latents(folder / "nan_scale.h5", np.nan), r"scaling factor")
    out["zero_scale"] = (_h5_latents(folder / "zero_scale.h5", 0.0), r"scaling factor")
    return out


def _images(folder: Path, arrays, suffix=".png", **save) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}{suffix}", **save)
    return folder


def bad_image_folders(folder) -> dict[str, tuple[Path, str]]:
    """Image folders every --data reader must refuse in one line. Pillow reads a file by
    its content, so a TIFF named .png brings modes no PNG has (32-bit "I", "F")."""
    folder = Path(folder)
    grey = np.zeros((8, 8), np.uint8)
    out = {"one_image": (_images(folder / "one_image", [grey]), r"1 image in the folder"),
           "mode_F": (_images(folder / "mode_F", [grey.astype(np.float32)] * 2,
                              format="TIFF"), r"image mode 'F'"),
           "mode_I": (_images(folder / "mode_I", [grey.astype(np.int32)] * 2,
                              format="TIFF"), r"image mode 'I'")}
    (folder / "empty").mkdir()
    out["empty"] = (folder / "empty", r"no images")
    damaged = _images(folder / "damaged", [grey, grey])
    (damaged / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out["damaged"] = (damaged, r"cannot read image")
    return out


def _folder(path: Path, files: dict) -> Path:
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def bad_model_folders(folder) -> dict[str, dict[str, tuple[Path, str]]]:
    """{"pipelines": ...} for sample --model diffusers:DIR, {"vaes": ...} for encode --vae."""
    folder = Path(folder)
    unet = {"_class_name": "UNet2DModel", "sample_size": 8}
    pipes = {
        "no_index": (_folder(folder / "p_no_index", {"unet/config.json": unet}),
                     r"not a diffusers pipeline folder"),
        "index_not_json": (_folder(folder / "p_bad_index", {"model_index.json": "{unet"}),
                           r"model_index.json is not readable JSON"),
        "index_wrong_class": (_folder(folder / "p_wrong", {
            "model_index.json": {"_class_name": "DDPMPipeline",
                                 "unet": ["diffusers", "UNet2DConditionModel"],
                                 "scheduler": ["diffusers", "DDPMScheduler"]},
            "unet/config.json": unet}), r"unet/ holds a UNet2DModel, not the "
                                         r"UNet2DConditionModel"),
    }
    vaes = {"unet_as_vae": (_folder(folder / "v_unet", {"config.json": unet}),
                            r"holds a UNet2DModel, not the AutoencoderKL"),
            "missing": (folder / "v_missing", r"no such folder")}
    return {"pipelines": pipes, "vaes": vaes}


def bad_decompose_files(folder) -> dict[str, tuple[Path, str, bool]]:
    """Trajectory files decompose must refuse: {name: (path, regex, pass --model?)}. The
    files are valid format v1 (inspect reads them); what they lack is what re-running needs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = {"name": "euler", "steps": S, "t_max": 1.0, "t_min": 0.0}
    model = {"data": {"name": "gmm", "dim": 16}}
    cases = {
        "no_model_path": (model, full, r"does not say which model", False),
        "model_gone": ({**model, "path": str(folder / "gone.pt")}, full,
                       r"gone.pt is not a checkpoint file here", False),
        "sampler_keys_missing": (model, {"name": "euler", "steps": S}, r"lack \['t_max'", True),
        "sampler_disagrees": (model, {**full, "steps": 7}, r"7 steps\) disagree with the 5",
                              True),
        "sampler_foreign": (model, {**full, "name": "DDIMScheduler"},
                            r"this run's sampler is 'DDIMScheduler'", True),
    }
    out = {}
    for name, (m, sampler, expect, pass_model) in cases.items():
        def mutate(g, a, m=m, sampler=sampler):
            g.attrs["model"] = json.dumps(m)
            g.attrs["sampler"] = json.dumps(sampler)
        path = write_good(folder / f"{name}.h5", mutate=mutate, dim=16, data_dim=16)
        out[name] = (path, expect, pass_model)
    out["other_shape"] = (write_good(folder / "other_shape.h5", mutate=lambda g, a: g.attrs.
                                     __setitem__("sampler", json.dumps(full))),
                          r"states have shape \(8,\), but the model reads \(16,\)", True)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad")
    for name, (path, case) in build(target).items():
        print(f"{name:22s} {path.stat().st_size:7d} bytes  {case.note}")
