"""The `noiseshift` command line: a thin layer over the library.

Each command lives in its own module in this package and registers itself on `app`.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import NoiseshiftError
from .common import app, err_console

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in ("common",):
        importlib.import_module(f"{__name__}.{_m.name}")


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
