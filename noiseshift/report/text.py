"""Numbers as the findings and report.md write them: 'value [lo, hi]'."""

from __future__ import annotations

import numpy as np


def fmt(e_value, lo=None, hi=None, spec="+.3f") -> str:
    if lo is None or not np.isfinite(lo):
        return f"{e_value:{spec}}"
    return f"{e_value:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def col(row, key, spec="+.3f") -> str:
    """Column `key` of a table row with its CI columns key_lo, key_hi."""
    return fmt(row[key], row.get(f"{key}_lo"), row.get(f"{key}_hi"), spec)


def has(row, key) -> bool:
    """Whether the row holds a finite value under `key`."""
    return key in row and row[key] is not None and np.isfinite(row[key])
