"""Startup: the CLI imports only what a command uses.

Each check runs in a fresh interpreter (this process has long since imported everything).
No timings here: bench/bench_startup.py measures them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from noiseshift.cli import COMMANDS, app

HEAVY = ("torch", "sklearn", "scipy.stats", "matplotlib", "pandas")
CLI = Path(__file__).resolve().parents[1] / "noiseshift" / "cli"


def loaded_after(code: str) -> tuple[dict[str, bool], str]:
    """Which of HEAVY (and which noiseshift.cli modules) a fresh interpreter holds after
    running `code`, and what `code` printed."""
    probe = (f"{code}\nimport json, sys\n"
             "print(json.dumps({m: m in sys.modules for m in "
             f"{HEAVY!r} + tuple(n for n in sys.modules if n.startswith('noiseshift.cli'))}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    printed, _, last = out.rstrip("\n").rpartition("\n")
    return json.loads(last), printed


def run_cli(*args: str) -> str:
    """Code that runs the console entry point on ARGS, as `noiseshift ARGS` does."""
    return (f"import sys\nsys.argv = ['noiseshift', *{list(args)!r}]\n"
            "from noiseshift.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")


def test_importing_the_cli_loads_no_heavy_library():
    loaded, _ = loaded_after("import noiseshift.cli")
    assert not any(loaded[m] for m in ("sklearn", "scipy.stats", "matplotlib", "pandas")), loaded
    assert not loaded["torch"], loaded


def test_help_lists_the_commands_without_importing_them():
    loaded, printed = loaded_after(run_cli("--help"))
    assert not any(loaded[m] for m in HEAVY), loaded
    commands = {m for m in loaded if m.startswith("noiseshift.cli.")} - {"noiseshift.cli.common"}
    assert not commands, commands
    listing = printed[printed.index("Commands"):]
    words = [line.replace("│", " ").split() for line in listing.splitlines()]
    listed = [w[0] for w in words if len(w) > 1 and w[0] in COMMANDS]
    assert listed == list(COMMANDS)


def test_inspect_reads_a_trajectory_file_without_torch(tmp_path):
    from make_bad_corpus import write_good

    path = write_good(tmp_path / "small.h5")
    loaded, printed = loaded_after(run_cli("inspect", str(path)))
    assert not any(loaded[m] for m in HEAVY), loaded
    assert loaded["noiseshift.cli.inspect"] and not loaded.get("noiseshift.cli.sample")
    assert "baseline" in printed


def _command_functions() -> dict[str, tuple[str, ast.FunctionDef]]:
    """name -> (module, function) for each @app.command(name) in cli/."""
    out = {}
    for path in CLI.glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            for d in getattr(fn, "decorator_list", []):
                if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command":
                    out[d.args[0].value] = (path.stem, fn)
    return out


def test_the_table_names_every_command_module_and_a_summary_that_fits():
    # The summary is what `noiseshift --help` lists, one line at 80 columns (click clips
    # longer help with "...").
    found = _command_functions()
    assert set(found) == set(COMMANDS)
    width = 80 - 6 - max(map(len, COMMANDS))
    for name, (module, short) in COMMANDS.items():
        stem, fn = found[name]
        assert module == stem and ast.get_docstring(fn), name
        assert short[-1] in ".?" and len(short) <= width, (name, short)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_loads_when_asked_for(name):
    res = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert f"Usage: noiseshift {name} [OPTIONS]" in res.output


def test_a_mistyped_command_is_suggested_from_the_table():
    res = CliRunner().invoke(app, ["insepct"])
    assert res.exit_code == 2 and "Did you mean 'inspect'?" in res.output
