"""The `noiseshift` command line: a thin layer over the library.

Each command lives in its own module in this package and registers itself on `app`;
`COMMANDS` lists them.
"""

from __future__ import annotations

import importlib

from ..errors import NoiseshiftError
from .common import app, err_console

# Registration order is the order `--help` lists them: the story's order.
COMMANDS = ("demo", "train", "train_estimator", "sample", "estimate", "report", "inspect",
            "probe", "encode")
for _name in COMMANDS:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    """Console entry point: a user mistake is one line on stderr and exit 2."""
    try:
        app()
    except NoiseshiftError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


__all__ = ["app", "main"]
