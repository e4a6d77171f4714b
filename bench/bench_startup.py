"""Startup time: `noiseshift --help`, `noiseshift inspect small.h5`, `import noiseshift` and a
bare `python -c pass`, each in a fresh process.

The cases are interleaved (so load from other processes hits them alike), each repeated;
the median wall time and its ratio to the bare interpreter are printed. Targets (issue 19):
--help <= 0.5 s, inspect <= 1.5 s, import <= 1 s.

    python bench/bench_startup.py                  # 5 repeats, ~1 min
    python bench/bench_startup.py --repeats 9
"""

from __future__ import annotations

import argparse
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


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        todo = cases(small_file(tmp / "small.h5"))
        times: dict[str, list[float]] = {k: [] for k in todo}
        for _ in range(args.repeats):
            for name, argv in todo.items():
                times[name].append(timed(argv))
    finally:
        shutil.rmtree(tmp)
    bare = statistics.median(times["python -c pass"])
    print(f"{'case':<30} {'median s':>9} {'min s':>7} {'x bare':>7}   ({args.repeats} runs)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<30} {med:9.3f} {min(ts):7.3f} {med / bare:7.1f}")


if __name__ == "__main__":
    main()
