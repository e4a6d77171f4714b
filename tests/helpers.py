"""Helpers shared by several test files (imported as `helpers`, like make_bad_corpus)."""

import hashlib
import sys

import h5py
import pytest

from noiseshift.data import Dataset, make_gmm


def run_digest(path, run) -> str:
    """A hash of one run's datasets and attributes: equal iff the run is unchanged."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        g = f["runs"][run]
        for k in sorted(g):
            h.update(k.encode() + g[k][()].tobytes())
        for k in sorted(g.attrs):
            h.update(k.encode() + str(g.attrs[k]).encode())
    return h.hexdigest()


def cli_exit_2(argv, capsys) -> list[str]:
    """Run the console entry point on argv; assert it exits with 2 and return stderr's
    lines."""
    from noiseshift.cli import main

    saved, sys.argv = sys.argv, ["noiseshift", *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = saved
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    return err.splitlines()


def image_gmm(shape=(1, 8, 8)) -> Dataset:
    """The 64-d mixture seen as images, so estimators read a pipeline's states."""
    d = make_gmm(dim=64)
    return Dataset(d.x.reshape(-1, *shape), d.labels, d.spec, d.num_classes,
                   mixture=d.mixture)


def tune_table_text(rows, budget: int) -> str:
    """`tune_table` of ``rows`` as an 80-column console prints it, checked to fit."""
    import io

    from rich.console import Console

    from noiseshift.tuning.result import TuneResult
    from noiseshift.tuning.show import tune_table

    res = TuneResult(rows=rows, budget=budget, seeds=(0,), plan=[], meter="subspace",
                     space="digits classifier penultimate features (64-d, noiseshift's own)")
    console = Console(width=80, file=io.StringIO())
    console.print(tune_table(res))
    text = console.file.getvalue()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    return text
