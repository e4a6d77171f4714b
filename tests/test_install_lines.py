"""Every `pip install` line in README.md's command blocks is run by .ci/run (for real, or
resolved with --dry-run beside the CPU torch), so the README cannot advertise an install line
that nothing checks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = {"--quiet", "--disable-pip-version-check", "--dry-run", "-q"}


def _install_args(text: str) -> list[str]:
    """The arguments of each `pip install` command, quotes and quiet flags dropped."""
    out = []
    for cmd in re.split(r"&&|;|\n", text.replace("\\\n", " ")):
        cmd = cmd.split("#")[0]
        words = shlex.split(cmd) if "pip install" in cmd else []
        starts = [i + 2 for i in range(len(words) - 1)
                  if words[i].endswith("pip") and words[i + 1] == "install"]
        if starts:
            out.append(" ".join(w for w in words[starts[0]:] if w not in NOISE))
    return out


def _blocks(markdown: str) -> str:
    """The lines of the shell command blocks."""
    lines, fence = [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence in ("bash", "sh", ""):
            lines.append(line)
    return "\n".join(lines)


def test_every_readme_install_line_is_run_by_ci():
    shown = _install_args(_blocks((ROOT / "README.md").read_text()))
    ci = (ROOT / ".ci" / "run").read_text()
    checked = set(_install_args(ci))
    loop = re.search(r'for args in (.*?); do', ci).group(1)
    checked |= set(shlex.split(loop))
    assert shown, "README.md shows no install line"
    assert not [s for s in shown if s not in checked], \
        f"README install lines that .ci/run does not run: {[s for s in shown if s not in checked]}"
