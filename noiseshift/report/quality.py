"""Sample quality per run and paired against the baseline, through `analysis.quality.quality` and
`quality_difference` in one feature space shared by every run."""

from __future__ import annotations

import numpy as np

from ..analysis.classifier import digits_classifier
from ..analysis.features import extractor_space
from ..analysis.quality import FeatureSpace, feature_space, quality, quality_difference
from ..errors import NoiseshiftError
from .runs import RunData, is_paired
from .sanity import quality_problems
from .stats import unpaired


def quality_tables(runs: list[RunData], base: RunData | None, data, n_boot: int, seed: int,
                   notes: list[str], progress, features: str | None = None
                   ) -> tuple[dict, dict, dict, str | None]:
    """({run: {metric: Estimate or value}}, {run: {metric: Estimate of run - baseline}},
    {run: [what its quality numbers say is broken]}, the feature space they are in).
    ``features``: a `--features` spec (`analysis.features`), default the data's own space.
    Runs without samples, or whose samples do not match the data's shape, are left out
    (with a note). With ``features`` and nothing to measure in them, raises: a space asked
    for and silently not used would leave the reader guessing."""
    if data is None:
        _nothing_to_compare(features, "the runs do not name data that loads here")
        return {}, {}, {}, None
    usable = [r for r in runs if r.samples is not None and tuple(r.shape) == data.shape]
    for r in runs:
        if r.samples is not None and all(r is not u for u in usable):
            notes.append(f"run {r.name!r}: samples of shape {r.shape} do not match the data "
                         f"{data.shape}; no quality metrics")
    if not usable:
        _nothing_to_compare(features, f"no run has samples of the data's shape {data.shape}")
        return {}, {}, {}, None
    space = _feature_space(data, progress) if features is None else \
        extractor_space(data, features)
    fd_scale = float(np.trace(np.atleast_2d(np.cov(space.reference, rowvar=False))))
    kw = {"space": space, "n_boot": n_boot, "seed": seed}
    qual = {}
    for k, r in enumerate(usable):
        conditional = int((r.attrs.get("model") or {}).get("num_classes", 0) or 0) > 0
        q = quality(r.samples, data, labels=r.labels if conditional else None, **kw)
        if "modes" in q:
            q["modes"] = q["modes"]["covered"]
        qual[r.name] = q
        if progress is not None:
            progress("sample quality", k + 1, len(usable))
    qdiff = {}
    if base is not None and base.name in qual:
        for r in usable:
            if r is not base:
                qdiff[r.name] = _difference(base, r, qual, data, kw)
    problems = {name: quality_problems(q, fd_scale) for name, q in qual.items()}
    return qual, qdiff, problems, space.label


def _nothing_to_compare(features: str | None, why: str) -> None:
    if features is not None:
        raise NoiseshiftError(f"--features {features}: no sample quality to measure in it "
                              f"({why}); --data names the data the runs' model learned")


def _feature_space(data, progress) -> FeatureSpace:
    if data.name != "digits":
        return feature_space(data, classifier=None)
    on_step = None if progress is None else \
        lambda d, t, m: progress("training the digits classifier (first use)", d, t)
    return feature_space(data, classifier=digits_classifier(progress=on_step))


def _difference(base: RunData, r: RunData, qual: dict, data, kw: dict) -> dict:
    """run - baseline: paired when the runs share seeds, else from the two CIs."""
    qa, qb = qual[base.name], qual[r.name]
    both = [k for k in ("fd", "kid", "precision", "recall", "accuracy", "log_likelihood")
            if k in qa and k in qb]
    if not is_paired(base, r):
        return {k: unpaired(qa[k], qb[k]) for k in both}
    labels = base.labels if "accuracy" in both else None
    d = quality_difference(base.samples, r.samples, data, labels=labels, **kw)
    return {k: d[k] for k in both}
