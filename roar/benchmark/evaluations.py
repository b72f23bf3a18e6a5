"""The evaluations in a benchmark's results, and each method's AUC with intervals over seeds.

An *evaluation* is one way of scoring the methods: a mode (``roar``, ``kar``, ``noretrain``, or
any mode a later protocol adds) under one fill (``protocol.fill``, recorded in every row), on one
(dataset, model). Each evaluation holds, per method, a ``(thresholds, seeds)`` accuracy matrix with
the shared unmasked reference in its place (Hooker et al., NeurIPS 2019, Figure 4: the curves start
at the unmasked accuracy), so that every statistic can resample seeds *jointly* across methods.

:func:`analyse` gives each method its area under the mean curve with a percentile bootstrap
interval over seeds, its paired difference from ``random`` (same resampled seeds for both, so
"not distinguishable from random" is a paired test), its rank and how often it keeps each rank
under resampling (:mod:`roar.statistics`).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roar.benchmark.plan import DEFAULT_FILL, MODES, REFERENCE_METHOD, REFERENCE_MODE, recorded_fill
from roar.statistics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Interval,
    IntervalUndefinedWarning,
    percentile_bounds,
    ranking_stability,
    ranks_of,
    resample_indices,
    resampled_means,
    trapezoid_area,
)

BASELINE = "random"
# Where each mode's curves take the shared unmasked reference: (the reference rows' mode, threshold).
# A mode not listed here (a later protocol's) is scored on its own points only.
REFERENCE_POINTS = {"roar": (REFERENCE_MODE, 0.0), "kar": (REFERENCE_MODE, 1.0), "noretrain": ("noretrain", 0.0), "noretrain_kar": ("noretrain", 1.0)}


def lower_is_better(mode: str) -> bool:
    """ROAR-order removal is better when accuracy falls fast (lower area); keeping (KAR order) when it stays high."""
    # a mode named for keeping the top features (kar, noretrain_kar, lerf...) ranks the highest area first
    return not any(word in mode for word in ("kar", "lerf", "keep"))


def _is_done(row: dict[str, Any]) -> bool:
    return (row.get("status") or "done") == "done" and row.get("test_acc") not in (None, "")


row_fill = recorded_fill
"""The fill a row was run with: its own ``fill``, else its config's, else the default (:func:`~roar.benchmark.plan.recorded_fill`)."""


@dataclass
class Evaluation:
    """One evaluation's accuracies, ready to resample.

    Attributes:
        dataset, model, mode, fill: what was evaluated, and how.
        thresholds: the curve's x values, sorted, the reference point included.
        seeds: the seeds, one column each of every matrix.
        accuracy: ``{method: (thresholds, seeds) array}``, NaN where a run is missing.
        seconds: the summed wall time of the evaluation's runs, its reference runs included.
        runs: how many runs that is.
    """

    dataset: str
    model: str
    mode: str
    fill: str
    thresholds: list[float]
    seeds: list[int]
    accuracy: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    runs: int = 0

    @property
    def name(self) -> str:
        return f"{self.mode} ({self.fill})"

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.mode)

    @property
    def fewest_seeds(self) -> int:
        """The fewest seeds any point of any method's curve has (an unfinished grid has points of fewer)."""
        counts = [int(np.isfinite(row).sum()) for matrix in self.accuracy.values() for row in matrix]
        return min((c for c in counts if c), default=0)  # a threshold a curve lacks is no point of it (incomplete)

    def complete(self, method: str) -> bool:
        """Every threshold has at least one seed: the area is comparable with the others'."""
        return bool(np.isfinite(self.accuracy[method]).any(axis=1).all())


def evaluations(rows: Iterable[dict[str, Any]], default_fill: str = DEFAULT_FILL) -> list[Evaluation]:
    """Group done result rows into evaluations, one per (dataset, model, mode, fill), sorted."""
    rows = [r for r in rows if _is_done(r)]
    references: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        dataset, model, mode = str(row["dataset"]), str(row["model"]), str(row["mode"])
        if row["method"] == REFERENCE_METHOD:  # unmasked: the same for every fill
            references[(dataset, model, mode)].append(row)
        else:
            groups[(dataset, model, mode, row_fill(row, default_fill))].append(row)
    found = []
    def order(key: tuple[str, str, str, str]) -> tuple[Any, ...]:  # the report's order: roar, kar, noretrain, then new modes
        dataset, model, mode, fill = key
        return (dataset, model, MODES.index(mode) if mode in MODES else len(MODES), mode, fill != default_fill, fill)

    for (dataset, model, mode, fill), own in sorted(groups.items(), key=lambda item: order(item[0])):
        ref_mode, ref_threshold = REFERENCE_POINTS.get(mode, (None, None))
        refs = references.get((dataset, model, ref_mode), []) if ref_mode else []
        # A reference seed none of this evaluation's runs has (an unfinished grid, an old fill's rows
        # after seeds were added) is not one of its seeds: it would move the area off its interval
        # and count a seed the masked points never ran.
        ran = {int(r["seed"]) for r in own}
        refs = [r for r in refs if int(r["seed"]) in ran]
        thresholds = sorted({round(float(r["threshold"]), 9) for r in own} | ({ref_threshold} if refs else set()))
        seeds = sorted({int(r["seed"]) for r in own + refs})
        t_index, s_index = {t: i for i, t in enumerate(thresholds)}, {s: i for i, s in enumerate(seeds)}
        methods = sorted({str(r["method"]) for r in own})
        accuracy = {m: np.full((len(thresholds), len(seeds)), math.nan) for m in methods}
        for row in own:
            accuracy[str(row["method"])][t_index[round(float(row["threshold"]), 9)], s_index[int(row["seed"])]] = float(row["test_acc"])
        for row in refs:
            for matrix in accuracy.values():
                matrix[t_index[ref_threshold], s_index[int(row["seed"])]] = float(row["test_acc"])
        seconds = sum(float(r["seconds"]) for r in own + refs if r.get("seconds") not in (None, ""))
        found.append(Evaluation(dataset, model, mode, fill, thresholds, seeds, accuracy, seconds, len(own) + len(refs)))
    return found


@dataclass
class MethodResult:
    """One method under one evaluation.

    Attributes:
        method: the method.
        auc: area under its mean curve, with the bootstrap interval over seeds.
        delta: ``auc`` minus ``random``'s, with the paired interval (None without a complete ``random``).
        rank: 1 = best, equal areas sharing one; None for an incomplete curve (not comparable).
        stability: ``{rank: fraction of resamples}`` among the complete methods (empty with one seed).
        complete: every threshold present.
        points: the curve's number of points.
    """

    method: str
    auc: Interval
    delta: Interval | None
    rank: int | None
    stability: dict[int, float]
    complete: bool
    points: int

    @property
    def distinguishable(self) -> bool | None:
        """False when the paired interval of the difference from random contains 0; None when undefined."""
        if self.delta is None or not self.delta.defined or self.method == BASELINE:
            return None
        return not self.delta.contains(0.0)

    @property
    def holds_rank(self) -> float | None:
        """The fraction of resamples in which the method keeps its rank."""
        return self.stability.get(self.rank) if self.rank is not None and self.stability else None


def analyse(
    evaluation: Evaluation, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> list[MethodResult]:
    """Each method's AUC interval, paired difference from random, rank and rank stability; best first.

    All methods share one set of resampled seed indices, so differences and ranks are paired.
    With a single seed every interval is NaN (an :class:`IntervalUndefinedWarning` says so).
    """
    ev = evaluation
    methods = sorted(ev.accuracy)
    n = len(ev.seeds)
    index = resample_indices(n, resamples, seed)
    estimate = {m: float(trapezoid_area(ev.thresholds, np.nanmean(ev.accuracy[m], axis=1))) for m in methods}
    replicates = {m: trapezoid_area(ev.thresholds, resampled_means(ev.accuracy[m], index)) for m in methods}
    if n < 2:
        warnings.warn(f"{ev.name} on {ev.dataset}/{ev.model} has {n} seed: no interval over seeds", IntervalUndefinedWarning, stacklevel=2)

    def interval(value: float, reps: np.ndarray) -> Interval:
        bounds = percentile_bounds(reps, level) if n >= 2 else (math.nan, math.nan)
        return Interval(value, *bounds, n, level)

    complete = [m for m in methods if ev.complete(m)]
    sign = 1.0 if ev.lower_is_better else -1.0
    complete.sort(key=lambda m: (sign * estimate[m], m))
    stability = np.zeros((0, 0))
    if n >= 2 and complete:
        stability = ranking_stability(np.stack([replicates[m] for m in complete], axis=1), ev.lower_is_better)
    base = BASELINE if BASELINE in complete else None
    # Competition ranking (equal areas share a rank, the next is skipped), as in the resamples.
    ranks = dict(zip(complete, (ranks_of(np.array([estimate[m] for m in complete]), ev.lower_is_better) + 1).tolist()))
    results = []
    for m in complete + sorted(set(methods) - set(complete)):
        done = m in complete
        delta = None
        if base is not None and done:
            delta = interval(estimate[m] - estimate[base], replicates[m] - replicates[base])
        rank = ranks.get(m)
        held = {k + 1: float(f) for k, f in enumerate(stability[complete.index(m)])} if done and stability.size else {}
        results.append(MethodResult(m, interval(estimate[m], replicates[m]), delta, rank, held, done, int(np.isfinite(ev.accuracy[m]).any(axis=1).sum())))
    return results
