"""Startup time: `noiseshift --help`, `noiseshift inspect small.h5`, `import noiseshift` and a
bare `python -c pass`, each in a fresh process.

The cases are interleaved (so load from other processes hits them alike), each repeated;
the median wall time and its ratio to the bare interpreter are printed. Targets (issue 19):
--help <= 0.5 s, inspect <= 1.5 s, import <= 1 s.

    python bench/bench_startup.py                  # 5 repeats, ~1 min
    python bench/bench_startup.py --repeats 9
    python bench/bench_startup.py --against /tmp/old    # also an older checkout, interleaved

The timed processes import this checkout (first on PYTHONPATH). With --against, every case
runs a second time with that checkout first instead (same interpreter, same moment), and the
table gains its medians and the ratio new / old.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from noiseshift.io import TrajectoryWriter


def small_file(path: Path) -> Path:
    """Two runs of 8 steps, 16 samples of 16x16: what a user inspects after a short run."""
    for name in ("unguided", "nag-1.5"):
        with TrajectoryWriter(path, name, n=16, shape=(1, 16, 16), schedule="linear",
                              sampler={"name": "euler", "steps": 8}, seed=0) as w:
            for i in range(8):
                w.callback({"i": i, "t": 1 - i / 8, "x": np.zeros((16, 1, 16, 16)),
                            "x0_pred": None})
    return path


def noiseshift_argv() -> list[str]:
    """The console script beside this interpreter (what a user runs), else `-m noiseshift`."""
    script = Path(sys.executable).with_name("noiseshift")
    return [str(script)] if script.exists() else [sys.executable, "-m", "noiseshift"]


def cases(h5: Path) -> dict[str, list[str]]:
    cli = noiseshift_argv()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import noiseshift": [sys.executable, "-c", "import noiseshift"],
        "noiseshift --help": [*cli, "--help"],
        "noiseshift inspect small.h5": [*cli, "inspect", str(h5)],
    }


def timed(argv: list[str], cwd: Path, env: dict) -> float:
    # Run outside the checkout: `python -c` puts the working folder first on sys.path,
    # which would shadow PYTHONPATH (and --against).
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=cwd, env=env)
    return time.perf_counter() - start


def environments(against: str | None) -> dict[str, dict]:
    """'new': this checkout first on PYTHONPATH; 'old' (with --against): that checkout."""
    roots = {"new": str(Path(__file__).resolve().parents[1])}
    if against is not None:
        roots["old"] = against
    rest = os.environ.get("PYTHONPATH")
    return {e: {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, rest) if p)}
            for e, root in roots.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", help="an older checkout's root, timed interleaved")
    args = ap.parse_args()
    envs = environments(args.against)
    tmp = Path(tempfile.mkdtemp())
    try:
        todo = cases(small_file(tmp / "small.h5"))
        times = {(k, e): [] for k in todo for e in envs}
        for _ in range(args.repeats):
            for name, argv in todo.items():
                for e, env in envs.items():
                    times[name, e].append(timed(argv, tmp, env))
    finally:
        shutil.rmtree(tmp)
    report(times, list(todo), list(envs), args.repeats)


def report(times: dict, names: list[str], envs: list[str], repeats: int) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    head = "".join(f" {e + ' median s':>13} {'x bare':>7}" for e in envs)
    print(f"{'case':<30}{head}{'  new/old' if len(envs) > 1 else ''}   ({repeats} runs)")
    for name in names:
        cells = "".join(f" {med[name, e]:13.3f} {med[name, e] / med['python -c pass', e]:7.1f}"
                        for e in envs)
        ratio = f" {med[name, 'new'] / med[name, 'old']:8.2f}" if len(envs) > 1 else ""
        print(f"{name:<30}{cells}{ratio}")


if __name__ == "__main__":
    main()
