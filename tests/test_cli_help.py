"""Every command's --help reads at 80 columns: no line past the width, nothing cut, and
option descriptions get most of the line (not a squeezed column beside the option names)."""

import re

import pytest
from typer.testing import CliRunner

from noiseshift.cli import COMMANDS as TABLE
from noiseshift.cli import app

COMMANDS = sorted(TABLE)
DESCRIPTION_FROM = 34  # a description starts by this column: it gets >= 44 of 78


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    return res.stdout


def test_every_command_is_checked():
    assert {"demo", "sample", "estimate", "report", "inspect", "audit"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns(command):
    text = _help(command)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    assert "…" not in text, text
    options = lines[next(i for i, x in enumerate(lines) if x == "Options:") + 1:]
    starts = []
    for line in options:
        m = re.match(r"^  (-\S.*?)  +(\S.*)$", line) or re.match(r"^( +)(\S.*)$", line)
        if m:
            starts.append(m.start(2))
    assert starts and max(starts) <= DESCRIPTION_FROM, text


def test_top_level_help_at_80_columns():
    text = _help()
    assert max(map(len, text.splitlines())) <= 80 and "Commands:" in text
