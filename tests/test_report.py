"""The report: tables, findings, files and the `report` command, on small synthetic files
written with the real writer and estimated with the real `estimate` pipeline."""

import hashlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.data import MixtureDenoiser, load_digits, make_gmm
from noiseshift.estimation import estimate_file
from noiseshift.io import TrajectoryWriter
from noiseshift.recording import sample_and_record
from noiseshift.report import build_report, write_report
from noiseshift.report.tables import Column, demo_tables, report_tables, stacked
from noiseshift.runtime import generator
from noiseshift.schedules import get_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
STEPS, N = 8, 64
NAG = {"mode": "estimator", "interval": [0.0, 0.8]}
RUNS = {  # name: (guidance, extra isotropic noise carried by the states and samples)
    "unguided": ({"kind": "none"}, 0.4),
    "nag-estimator-0.5": ({"kind": "nag-estimator-0.5", "nag": {**NAG, "scale": 0.5}}, 0.2),
    "nag-estimator-1": ({"kind": "nag-estimator-1", "nag": {**NAG, "scale": 1.0}}, 0.05),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Module fixtures run before conftest's per-test cache isolation: isolate here too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOISESHIFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


def write_digits_runs(path, runs=RUNS, n=N, steps=STEPS, seed=0):
    """True forward-noised digits plus extra noise 2 t (1 - t) * extra: a known positive
    shift, largest for the unguided run. Same seed everywhere: runs pair sample by sample."""
    data = load_digits(16)
    sch = get_schedule("linear")
    ts = np.linspace(1, 0, steps + 1)
    for name, (guidance, extra) in runs.items():
        gen = generator(seed)
        idx = torch.randint(len(data), (n,), generator=gen)
        x0, labels = data.x[idx], data.labels[idx]
        eps, z = torch.randn(x0.shape, generator=gen), torch.randn(x0.shape, generator=gen)
        with TrajectoryWriter(path, name, n=n, shape=(1, 16, 16), schedule="linear",
                              sampler={"name": "euler-maruyama", "steps": steps},
                              guidance=guidance, seed=seed, labels=labels, save_x0=False,
                              model={"kind": "unet", "num_classes": 10,
                                     "data": {"name": "digits", "side": 16}}) as w:
            for i, t in enumerate(ts[:-1]):
                x = sch.alpha(t) * x0 + sch.sigma(t) * eps + extra * 2 * t * (1 - t) * z
                w.callback({"i": i, "t": float(t), "x": x})
            w.finish(x0 + extra * z)
    return path


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory, cache):
    path = write_digits_runs(tmp_path_factory.mktemp("digits") / "trajectories.h5")
    estimate_file(path, ["variance", "subspace"])
    return path


@pytest.fixture(scope="module")
def rep(digits_file, cache):
    return build_report(digits_file, estimator="subspace", n_boot=50)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the library --------------------------------------------------------------------------------

def test_tables(rep):
    assert rep.main == "subspace" and rep.independent is None
    assert rep.baseline == "unguided" and rep.runs[0].name == "unguided"
    assert list(rep.summary.run) == ["unguided", "nag-estimator-0.5", "nag-estimator-1"]
    assert len(rep.steps) == 2 * 3 * STEPS  # both estimators, every run and step
    s = rep.summary.set_index("run")
    # The shift follows the injected noise: largest unguided, ordered by the noise.
    assert s.loc["unguided", "mean_delta_lo"] > 0.005
    assert (s.loc["unguided", "mean_abs_delta"] > s.loc["nag-estimator-0.5", "mean_abs_delta"]
            > s.loc["nag-estimator-1", "mean_abs_delta"])
    for col in ("fd", "fd_lo", "fd_hi", "precision", "recall", "accuracy"):
        assert col in s
    assert s.loc["unguided", "fd"] > s.loc["nag-estimator-1", "fd"]
    assert set(rep.bands.band) == {"0-0.3", "0.3-0.7", "0.7-1"}


def test_paired_differences(rep):
    p = rep.paired.set_index("run")
    assert p.paired.all()
    for run in ("nag-estimator-0.5", "nag-estimator-1"):
        assert p.loc[run, "d_mean_abs_delta_hi"] < 0  # the shift shrinks, resolved
        assert p.loc[run, "d_fd_hi"] < 0  # and FD improves
    steps = rep.steps[(rep.steps.estimator == "subspace") & (rep.steps.run == "unguided")]
    assert steps.d_delta.isna().all()  # no difference of the baseline with itself


def test_route_b_next_to_the_measurement(rep):
    """The injected noise is isotropic: above t* = m2 / (1 + m2) the second-moment match
    predicts it, below t* it reads it with the wrong sign - and the report says so."""
    st = rep.steps[(rep.steps.estimator == "subspace") & (rep.steps.run == "unguided")]
    t_star = rep.m2 / (1 + rep.m2)
    above = st[(st.t > t_star + 0.1) & (st.t < 0.9)]
    below = st[st.t < t_star - 0.1]
    assert (np.sign(above.pred_b) == np.sign(above.delta)).all()
    assert (below.pred_b < 0).all() and (below.delta > 0).all()
    th = rep.theory.set_index("run")
    assert th.loc["unguided", "disagree"]
    text = " ".join(rep.findings)
    assert "route b" in text and "flat at t*" in text and "disagree" in text


def test_findings_come_from_the_numbers(rep):
    text = "\n".join(rep.findings)
    s = rep.summary.set_index("run")
    assert "drifts off its schedule" in text
    assert f"{s.loc['unguided', 'mean_delta']:+.3f}" in text
    assert "'nag-estimator-1' against 'unguided'" in text and "(better)" in text


def test_write_report(rep, tmp_path, cache):
    md = write_report(rep, tmp_path / "report", plot=True)
    out = md.parent
    text = md.read_text()
    assert text.startswith("# Noise-shift report") and "## Findings" in text
    for name in ("t_prime", "delta", "density", "quality_vs_scale", "samples_unguided"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 5000 and f"]({png.name})" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.run) == list(rep.summary.run)
    assert pd.read_csv(out / "steps.csv").shape[0] == len(rep.steps)


def test_second_meter_and_blind_zones(digits_file, cache):
    rep = build_report(digits_file, estimator="variance", quality=False, n_boot=30)
    assert rep.independent == "subspace"
    assert "ind_mean_abs_delta" in rep.summary and "d_ind_mean_abs_delta" in rep.paired
    # Variance matching under the linear schedule is blind at small t: flagged, excluded.
    v = rep.steps[rep.steps.estimator == "variance"]
    assert v.blind.any() and not v.blind.all()
    assert any("cannot read" in f for f in rep.findings)


def test_mixture_report(tmp_path, cache):
    data = make_gmm(dim=16, components=4, n=2048)
    model = MixtureDenoiser(data.mixture, "linear")
    info = {"kind": "mixture", "data": data.spec, "num_classes": 0}
    path = tmp_path / "gmm.h5"
    for name, extra in (("unguided", 1.0), ("more-noise", 1.3)):
        sample_and_record(model, path, name, 64, steps=8, seed=1, model_info=info,
                          diffusion=2.0 * extra, guidance={"kind": "none"})
    estimate_file(path, ["oracle", "variance"])
    rep = build_report(path, baseline="unguided", n_boot=30)
    assert rep.main == "variance" and rep.independent == "oracle"
    s = rep.summary.set_index("run")
    for col in ("log_likelihood", "energy", "modes", "fd"):
        assert col in s
    assert 0 <= s.loc["unguided", "modes"] <= 1
    assert "d_log_likelihood" in rep.paired


# -- the command --------------------------------------------------------------------------------

def test_cli_defaults_in_the_current_folder(digits_file, tmp_path, monkeypatch):
    monkeypatch.chdir(digits_file.parent)
    before = digest(digits_file), digest(digits_file.with_name("trajectories.estimates.h5"))
    res = runner.invoke(app, ["report", "--json", "--bootstrap", "20", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["estimator"] == "variance" and out["independent"] == "subspace"
    assert out["baseline"] == "unguided" and len(out["summary"]) == 3 and out["findings"]
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "summary.csv").exists()
    assert (digest(digits_file),
            digest(digits_file.with_name("trajectories.estimates.h5"))) == before


def test_cli_prints_tables(digits_file, tmp_path):
    res = runner.invoke(app, ["report", str(digits_file), "-e", "subspace", "--no-quality",
                              "--bootstrap", "20", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "noise shift per run" in res.output and "against the baseline" in res.output
    assert "wrote" in res.output


@pytest.mark.parametrize("args, words", [
    (["--baseline", "nope"], "no run 'nope'"),
    (["--estimator", "nope"], "no estimator 'nope'"),
])
def test_cli_user_mistakes(digits_file, tmp_path, args, words):
    res = runner.invoke(app, ["report", str(digits_file), "--out", str(tmp_path / "r"),
                              "--no-quality", *args])
    assert res.exit_code == 2 and words in res.output


def test_cli_missing_files(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "none.h5")])
    assert res.exit_code == 2 and "no such trajectory file" in res.output
    path = write_digits_runs(tmp_path / "t.h5", runs={"unguided": RUNS["unguided"]}, n=8,
                             steps=2)
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 2 and "noiseshift estimate" in res.output


def test_cli_estimates_of_another_file(digits_file, tmp_path):
    other = write_digits_runs(tmp_path / "other.h5", runs={"unguided": RUNS["unguided"]},
                              n=8, steps=2)
    res = runner.invoke(app, ["report", str(other), "--estimates",
                              str(digits_file.with_name("trajectories.estimates.h5"))])
    assert res.exit_code == 2 and "different trajectory file" in res.output


# -- tables at 80 columns -----------------------------------------------------------------------

NUM = r"[+-]?\d+(?:\.\d+)?"
CELL = re.compile(rf"^({NUM})(?: \[({NUM}),({NUM})\])?$")
SHIFT_KEYS = ("mean_delta", "mean_abs_delta", "mean_abs_delta_late", "ind_mean_abs_delta")
QUALITY_KEYS = ("fd", "precision", "recall", "accuracy", "log_likelihood", "energy")
PAIRED_KEYS = ("d_mean_abs_delta", "d_ind_mean_abs_delta", "d_fd", "d_precision", "d_recall",
               "d_accuracy", "d_log_likelihood")


def render(renderables, width=80) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    for r in renderables:
        console.print(r)
    return console.export_text()


def table_rows(text: str) -> dict[str, list[str]]:
    """run -> every cell of its rows, over all the stacked tables."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("│"):
            parts = [p.strip() for p in line.strip().strip("│").split("│")]
            rows.setdefault(parts[0], []).extend(parts[1:])
    return rows


def _decimals(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


def shown(cells: list[str], v: float, lo: float, hi: float) -> bool:
    """Some cell reads v [lo,hi] to 3 significant digits of the largest of them."""
    for cell in cells:
        m = CELL.match(cell)
        if m is None or (m[2] is None) != (not np.isfinite(lo)):
            continue
        tol = 0.5 * 10.0 ** -_decimals(m[1]) + 1e-12
        big = max(abs(x) for x in (v, lo, hi) if np.isfinite(x))
        if tol > 0.005 * big + 0.5e-6:  # fewer than 3 significant digits
            continue
        got = [float(x) for x in m.groups() if x is not None]
        want = [v] if m[2] is None else [v, lo, hi]
        if all(abs(g - w) <= tol for g, w in zip(got, want, strict=True)):
            return True
    return False


def assert_readable(text: str, frame: pd.DataFrame, keys, width: int = 80) -> None:
    """No cut cell: no ellipsis, no line past the width, every run name whole on a line,
    every cell a whole number or 'number [lo,hi]', every value of `keys` shown."""
    assert "…" not in text and "..." not in text, text
    assert max(map(len, text.splitlines())) <= width, text
    rows = table_rows(text)
    assert set(rows) == set(frame.run), text
    for r in frame.to_dict("records"):
        cells = rows[r["run"]]
        assert all(CELL.match(c) or c == "-" for c in cells), cells
        for key in keys:
            if key in r and np.isfinite(r[key]):
                lo, hi = r.get(f"{key}_lo", np.nan), r.get(f"{key}_hi", np.nan)
                assert shown(cells, r[key], lo, hi), (r["run"], key, cells)


def test_report_tables_at_80_columns(rep):
    text = render(report_tables(rep, 80))
    assert "noise shift per run" in text and "against the baseline" in text
    # Every stacked table has its caption, and the metrics are named in full once.
    assert text.count("┏") == text.count("noise shift per run") + text.count(
        "against the baseline")
    assert text.count("Fréchet distance") == 1 and "lower is better" in text
    summary_part, paired_part = text.split("against the baseline", 1)
    assert_readable(summary_part, rep.summary, SHIFT_KEYS + QUALITY_KEYS)
    assert_readable(paired_part, rep.paired, PAIRED_KEYS)
    # A wide terminal shows more columns per table: fewer tables.
    assert render(report_tables(rep, 200)).count("┏") < text.count("┏")


def test_demo_table_at_80_columns(rep):
    text = render(demo_tables(rep, 80))
    assert_readable(text, rep.summary, SHIFT_KEYS + ("fd", "accuracy"))
    assert "precision" not in text  # the demo keeps to the headline numbers


def test_long_run_names_wrap_whole():
    name = "a-very-long-run-name-" * 4 + "end"
    text = render(stacked("t", [{"run": name, "fd": 1.234, "fd_lo": 1.0, "fd_hi": 1.5}],
                          [], 40))
    assert text == ""  # no column: nothing to show
    text = render(stacked("t", [{"run": name, "fd": 1.234, "fd_lo": 1.0, "fd_hi": 1.5}],
                          [Column("fd", "FD")], 40), width=40)
    assert "…" not in text and max(map(len, text.splitlines())) <= 40
    pieces = [line.strip().strip("│").split("│")[0].strip() for line in text.splitlines()
              if line.startswith("│")]
    assert "".join(pieces) == name and "1.23 [1.00,1.50]" in text


def test_cli_report_at_80_columns(digits_file, tmp_path):
    res = runner.invoke(app, ["report", str(digits_file), "-e", "subspace", "--no-quality",
                              "--bootstrap", "20", "--out", str(tmp_path / "r")],
                        env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    want = build_report(digits_file, estimator="subspace", quality=False, n_boot=20)
    tables = res.output.split("\n- ")[0]  # the findings follow the tables
    summary_part, paired_part = tables.split("against the baseline", 1)
    assert_readable(summary_part, want.summary, SHIFT_KEYS)
    assert_readable(paired_part, want.paired, PAIRED_KEYS)


# -- sanity checks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diverged_file(tmp_path_factory, cache):
    """A sane baseline beside a run whose samples diverged (std about 28, as the tiny
    example pipeline's did)."""
    runs = {"unguided": RUNS["unguided"],
            "diverged": ({"kind": "nag-estimator-1", "nag": {**NAG, "scale": 1.0}}, 28.0)}
    path = write_digits_runs(tmp_path_factory.mktemp("diverged") / "trajectories.h5", runs)
    estimate_file(path, ["variance", "subspace"])
    return path


def test_diverged_samples_warn_and_get_no_verdict(diverged_file, tmp_path):
    rep = build_report(diverged_file, estimator="subspace", n_boot=20)
    assert [w["run"] for w in rep.warnings] == ["diverged"]
    problem = rep.warnings[0]["problem"]
    assert "sample std 2" in problem and "values reach" in problem and "FD" in problem
    sentence = next(f for f in rep.findings if f.startswith("'diverged' against"))
    assert "(better)" not in sentence and "(worse)" not in sentence and "%" not in sentence
    assert "no verdict" in sentence
    assert render(demo_tables(rep)).startswith("warning: run 'diverged': sample std")
    md = write_report(rep, tmp_path / "r", plot=False).read_text()
    assert md.split("\n")[2].startswith("> **Warning**: run `diverged`")
    res = runner.invoke(app, ["report", str(diverged_file), "-e", "subspace", "--bootstrap",
                              "20", "--out", str(tmp_path / "r2"), "--json"])
    out = json.loads(res.stdout)
    assert [w["run"] for w in out["warnings"]] == ["diverged"]
    assert "Fréchet distance" in out["metrics"]["fd"]
    res = runner.invoke(app, ["report", str(diverged_file), "-e", "subspace", "--bootstrap",
                              "20", "--out", str(tmp_path / "r3")], env={"COLUMNS": "80"})
    assert res.output.startswith("warning: run 'diverged': sample std"), res.output


def test_sane_runs_raise_no_warning(rep):
    assert rep.warnings == []
    assert "(better)" in " ".join(rep.findings)
