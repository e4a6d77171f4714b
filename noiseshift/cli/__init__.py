"""The `noiseshift` command line: a thin layer over the library.

Each command lives in its own module in this package and registers itself on `app` when
that module is imported; `common.COMMANDS` names the module and the one-line help of each,
so `noiseshift --help` lists them without importing any (see `common.LazyGroup`).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from rich.markup import escape

from .. import distributed
from ..errors import NoiseshiftError
from .common import COMMANDS, app, err_console

#: Commands that split their work over ranks under torchrun; any other command runs on
#: rank 0 alone (the other ranks exit at once).
DISTRIBUTED = ("sample", "estimate", "train", "train-estimator")


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _device(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "auto"


def _start_distributed(argv: list[str]) -> None:
    """Under torchrun: a command that splits its work joins the process group; any other
    runs on rank 0 only. Ranks other than 0 print nothing on stdout."""
    rank = distributed.env_world()[0]
    if _command(argv) not in DISTRIBUTED:
        if rank:
            raise SystemExit(0)
        return
    distributed.init(_device(argv))
    # torchrun stops the other ranks with SIGTERM when one fails: exit through `finally`
    # blocks, so each rank removes its shard files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)


def _wait_for_rank_0(seconds: float = 3.0) -> None:
    """Under torchrun every rank meets the same mistake in the input: rank 0 says it and
    exits 2, torchrun then stops the other ranks, which exit 2 too. A rank still running
    after `seconds` met a mistake of its own, and says it."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
    time.sleep(seconds)


def main() -> None:
    """Console entry point: a user mistake is one line on stderr and exit 2."""
    try:
        if distributed.launched():
            _start_distributed(sys.argv[1:])
        app()
    except NoiseshiftError as e:
        if distributed.env_world()[0]:
            _wait_for_rank_0()
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False,
                          soft_wrap=True)
        if distributed.launched():  # destroying the group would wait for the other ranks
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        distributed.destroy()


__all__ = ["COMMANDS", "app", "main"]
