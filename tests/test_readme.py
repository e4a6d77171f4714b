"""The README is a script: every ```bash and ```python block of README.md and docs/*.md runs
as written, in order (README.md first, then docs/ by name), in a fresh copy of the
repository, with NOISESHIFT_TINY=1 (noiseshift/tiny.py) so that it takes minutes. Python
blocks of one document share a namespace, as a reader's session would. A block opts out
only with the venv-setup marker, and only when it does nothing but make the venv.

docs/architecture.md is left out: its blocks state internal signatures, not commands.

Also here: the progress lines every command prints on stderr when it is not a terminal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from noiseshift.cli import app, common

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name != "architecture.md")
SETUP = "# venv setup: not run by tests/test_readme.py (CI has made the venv)"
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```$", re.S | re.M)

# Runs the blocks in order in the current folder; a python block of a document sees the
# names its earlier blocks defined. One line per block on stdout.
DRIVER = r"""
import json, subprocess, sys, time
blocks, spaces = json.load(open(sys.argv[1])), {}
for b in blocks:
    t0, where = time.perf_counter(), f"{b['doc']}:{b['line']}"
    if b["lang"] == "bash":
        code = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b["code"]]).returncode
        if code:
            sys.exit(f"FAILED {where} (exit {code})")
    else:
        if "import k_diffusion" in b["code"]:
            try:
                import k_diffusion  # noqa: F401
            except ImportError as e:
                print(f"SKIPPED {where}: k-diffusion does not import here ({e})", flush=True)
                continue
        exec(compile(b["code"], where, "exec"), spaces.setdefault(b["doc"], {}))
    print(f"ok {where} {time.perf_counter() - t0:.0f}s", flush=True)
"""


# A block right under this comment needs what CI cannot have (a weights file to download);
# the comment says what, and test_only_venv_setup_blocks_opt_out keeps such blocks rare.
NOT_RUN = re.compile(r"<!-- not run in CI: (.+?) -->\n$")


def blocks(doc: Path) -> list[dict]:
    """The doc's ```bash and ```python blocks with their first line number, and why a block
    is not run (None for the others)."""
    text = doc.read_text()
    return [{"doc": doc.relative_to(ROOT).as_posix(), "lang": m[1], "code": m[2],
             "line": text.count("\n", 0, m.start()) + 2,
             "not_run": (r := NOT_RUN.search(text, 0, m.start())) and r[1]}
            for m in FENCE.finditer(text)]


# What CI does itself before this test runs (.ci/run): make the venv, install into it, and run
# the suite. A setup block's other commands (the demo after the install) still run here.
DONE_BY_CI = re.compile(r"(python3 -m venv \.venv|(\.venv/bin/)?pip install |"
                        r"(\.venv/bin/)?pytest\b)")


def _commands(code: str) -> list[str]:
    return [c.strip() for line in code.splitlines() if not line.lstrip().startswith("#")
            for c in line.split("&&") if c.strip()]


def runnable(block: dict) -> dict | None:
    """The block as this test runs it: a setup block without what CI has done (None when
    nothing is left), any other block as written."""
    if block["not_run"]:
        return None
    if SETUP not in block["code"]:
        return block
    rest = [c for c in _commands(block["code"]) if not DONE_BY_CI.match(c)]
    return {**block, "code": " && ".join(rest)} if rest else None


def test_only_venv_setup_blocks_opt_out():
    marked = [b for doc in DOCS for b in blocks(doc) if SETUP in b["code"]]
    assert marked, "the quick start's venv block carries the marker"
    for b in marked:
        cmds = _commands(b["code"])
        assert b["lang"] == "bash" and DONE_BY_CI.match(cmds[0]), f"{b['doc']}:{b['line']}"
    quick = runnable(marked[0])
    assert quick is not None and "noiseshift demo" in quick["code"], marked[0]
    skipped = [b for doc in DOCS for b in blocks(doc) if b["not_run"]]
    assert len(skipped) <= 2, [f"{b['doc']}:{b['line']}" for b in skipped]
    for doc in DOCS:  # every command block is a bash or python one, so none escapes the test
        assert not re.search(r"^```(sh|shell|console|py)$", doc.read_text(), re.M), doc


def test_blocks_are_found():
    found = {b["doc"]: b for doc in DOCS for b in blocks(doc)}
    assert {"README.md", "docs/bring-your-own-model.md", "docs/scaling-out.md",
            "docs/trajectory-format.md"} <= set(found)


@pytest.mark.docs
def test_every_block_runs_in_order(tmp_path):
    repo = tmp_path / "clone"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "demo-out"))
    (repo / ".venv").symlink_to(sys.prefix)  # the venv the quick start made
    todo = [r for doc in DOCS for b in blocks(doc) if (r := runnable(b)) is not None]
    (tmp_path / "blocks.json").write_text(json.dumps(todo))
    env = {**os.environ, "NOISESHIFT_TINY": "1", "NOISESHIFT_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "COLUMNS": "100",
           "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "blocks.json")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    done = [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "SKIPPED "))]
    assert len(done) == len(todo), proc.stdout
    skipped = [line for line in done if line.startswith("SKIPPED")]
    assert all("k-diffusion" in line for line in skipped), skipped


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch):
    """A log or a pipe gets a line per stage with elapsed time and an estimate of what is
    left; --json stays silent."""
    monkeypatch.setattr(common, "LINE_EVERY", 0.0)
    monkeypatch.setattr(common, "LINE_MIN", 0.0)
    args = ["train", "--data", "gmm", "--dim", "4", "--steps", "6", "--batch-size", "16",
            "--out", str(tmp_path / "m.pt")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert any(re.search(r"^\[\d+s\] training.*\d+/6, \d+s elapsed", x) for x in lines), lines
    assert any("about" in x and "left" in x for x in lines), lines
    assert re.search(r"^\[\d+s\] training.*: done in \d+s$", lines[-1]), lines
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0 and res.stderr == "", res.stderr


def test_progress_lines_through_a_pipe(tmp_path):
    """The same through a real pipe (`noiseshift train ... 2> log`), every line allowed."""
    cli = ("import sys; from noiseshift.cli import common, main; common.LINE_EVERY = 0.0; "
           "common.LINE_MIN = 0.0; sys.argv[0] = 'noiseshift'; main()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", cli, "train", "--data", "gmm", "--dim", "4",
                           "--steps", "8", "--batch-size", "16", "--out", str(tmp_path / "m.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\[\d+s\] training, loss [\d.]+: \d/8, \d+s elapsed", proc.stderr, re.M)
    assert re.search(r"^\[\d+s\] training, loss [\d.]+: done in \d+s$", proc.stderr, re.M), \
        proc.stderr


def _fake_report(folder: Path) -> Path:
    """A demo report with two runs beside the unguided one: the columns demo_tables reads."""
    import pandas as pd

    folder.mkdir()
    base = {"n": 512, "steps": 16, "mean_delta": 0.032, "ind_mean_delta": 0.036,
            "mean_delta_late": 0.063, "mean_abs_delta": 0.0320, "ind_mean_abs_delta": 0.0360}
    pd.DataFrame([
        {"run": "nag-cf-1", **base, "mean_delta": 0.031, "fd": 7.40},
        {"run": "nag-estimator-step-1.5", **base, "mean_delta": 0.0255, "fd": 2.90},
        {"run": "unguided", **base, "fd": 3.41},
    ]).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame([
        {"run": "nag-cf-1", "baseline": "unguided", "d_mean_abs_delta": -0.00096,
         "d_ind_mean_abs_delta": -0.00072, "d_fd": 3.99, "d_fd_lo": 2.66, "d_fd_hi": 5.33},
        {"run": "nag-estimator-step-1.5", "baseline": "unguided", "d_mean_abs_delta": -0.0064,
         "d_ind_mean_abs_delta": -0.00756, "d_fd": -0.50, "d_fd_lo": -0.98, "d_fd_hi": -0.06},
    ]).to_csv(folder / "paired.csv", index=False)
    return folder


def test_demo_tables_rewrite_the_marked_regions(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import demo_tables
    finally:
        sys.path.remove(str(ROOT / "bench"))
    report = _fake_report(tmp_path / "report")
    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    for doc in (readme, results):
        doc.write_text("before\n<!-- demo:begin -->\nold table\n<!-- demo:end -->\nafter\n")
    docs = {readme: False, results: True}
    assert demo_tables.main([str(report), "--check"], docs=docs) == 1
    assert "old table" in readme.read_text()  # --check writes nothing
    assert demo_tables.main([str(report)], docs=docs) == 0
    text = readme.read_text()
    assert text.startswith("before\n<!-- demo:begin -->\n") and text.endswith(
        "<!-- demo:end -->\nafter\n") and "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| unguided (mean delta +0.032, subspace +0.036; late")
    # The default first; shift changes are d / baseline; a resolved FD gain in bold.
    assert rows[2] == ("| nag-estimator-step-1.5 (the default) | -20% / -21% | 2.90 | "
                       "**-0.50 [-0.98, -0.06]** |")
    assert rows[3] == "| nag-cf-1 | -3% / -2% | 7.40 | +3.99 [+2.66, +5.33] |"
    assert "n = 512, 16 steps" in text and "lower is better" in text
    assert "| +0.0255 | -20% / -21% |" in results.read_text()  # the wide table's mean delta
    assert demo_tables.main([str(report), "--check"], docs=docs) == 0
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- demo:begin -->"):
        demo_tables.main([str(report)], docs={tmp_path / "plain.md": False})
