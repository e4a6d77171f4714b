"""A --data value as a library spec, for the commands that take --data.

Apart from `common` so that `common` stays free of torch: `noiseshift --help` and `inspect`
import `common` and never load data.
"""

from __future__ import annotations

from ..data import parse_data_spec


def data_spec(text: str | None, size: int | None = None, dim: int | None = None) -> dict | None:
    """A --data value as a spec dict (None stays None)."""
    return None if text is None else parse_data_spec(text, size=size, dim=dim)
