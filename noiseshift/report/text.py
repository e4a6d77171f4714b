"""How the report writes things: numbers as the findings and report.md write them ('value
[lo, hi]'), every metric's full name, and the marker shapes that tell runs apart in every
figure."""

from __future__ import annotations

import numpy as np

MARKERS = "osD^vP*Xhp"  # with colour, so runs differ in print and for colour-blind readers


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


# Every metric named in full, once per output (terminal, report.md, --json): key -> words.
METRICS = {
    "delta": "Δ (delta) = t' - reference(t): the noise level a state carries, as the meter "
             "reads it, minus the meter's reading of true states at t; + = noisier than "
             "scheduled, 0 = on schedule",
    "fd": "FD = Fréchet distance between sample and data features, lower is better",
    "kid": "KID = kernel inception distance (unbiased MMD^2, cubic polynomial kernel) "
           "between sample and data features, lower is better",
    "precision": "precision = share of samples near the data (k-NN balls), higher is better",
    "recall": "recall = share of the data near some sample, higher is better",
    "accuracy": "accuracy = share of samples the digits classifier reads as the requested "
                "class, higher is better",
    "log_likelihood": "log-lik = mean log-likelihood under the true mixture, higher is better",
    "energy": "energy dist = energy distance to the true mixture, lower is better",
    "d_": "d X = X of the run minus X of the baseline (same seeds: paired)",
}


def metric_names(columns) -> dict[str, str]:
    """The entries of METRICS for the metrics among `columns` (a table's column names)."""
    cols = set(columns)
    keys = ["delta"] + [k for k in METRICS if k != "delta" and (
        k in cols or (k == "d_" and any(c.startswith("d_") for c in cols)))]
    return {k: METRICS[k] for k in keys}
