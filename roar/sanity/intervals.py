"""Confidence intervals of the sanity checks' similarities, over images and randomisation seeds.

A similarity in ``sanity.csv`` is a mean over a few dozen explained images (Adebayo et al.,
NeurIPS 2018, average over their test images too). Its percentile bootstrap interval, from the
same seeded code as the benchmark's (:mod:`roar.statistics`), says whether "this method's
maps changed more than the ``noise`` control's" is a difference or an accident of the images chosen.
When the same (method, check, step, metric) was measured under several randomisation seeds, the
values are stacked ``(seeds, images)`` and resampled two-way, so both sources of variation count.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from roar.statistics import DEFAULT_LEVEL, DEFAULT_RESAMPLES, IntervalUndefinedWarning, bootstrap_mean
from roar.sanity.maps import SimilarityRecord


def interval_rows(records: Iterable[SimilarityRecord], level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES) -> list[dict[str, Any]]:
    """``sanity.csv`` rows (method, check, step, layer, metric, mean, std, n) plus ``ci_low``, ``ci_high``.

    Records of the same (method, check, step, layer, metric) are the same measurement under
    different randomisation seeds: one row, over ``seeds x images`` values. One image gives NaN
    bounds (no interval over one unit).
    """
    groups: dict[tuple[str, str, int, str, str], list[SimilarityRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.check, record.step, record.layer, record.metric)].append(record)
    rows = []
    for same in groups.values():
        values = np.stack([r.values.double().numpy() for r in same]) if len(same) > 1 else same[0].values.double().numpy()
        with warnings.catch_warnings():  # one image: NaN bounds, shown as such
            warnings.simplefilter("ignore", IntervalUndefinedWarning)
            ci = bootstrap_mean(values, level, resamples)
        flat = values.reshape(-1)
        std = float(flat.std(ddof=1)) if flat.size > 1 else 0.0
        rows.append({**same[0].row(), "mean": float(flat.mean()), "std": std, "n": int(flat.size), "ci_low": ci.low, "ci_high": ci.high})
    return rows
