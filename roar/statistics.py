"""Seeded bootstrap intervals, paired differences, ranking stability and Kendall's tau.

A benchmark reports a handful of retraining seeds per point and a few dozen images per sanity
check, so every number it prints is an estimate. This module says how far each estimate may be
trusted, with the nonparametric percentile bootstrap (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13): resample the independent units (seeds, images) with replacement,
recompute the statistic, and take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
replicates. Differences between two methods are *paired*: both are recomputed on the same resampled
seeds, so a seed that is hard for every method cancels out (the design of Hooker et al., NeurIPS
2019, trains every method with the same seeds).

Every resampling here draws from ``numpy.random.default_rng(seed)``: the same inputs give the same
interval on every machine and every run.

With a single unit (one seed) no interval exists: the functions return NaN bounds and emit an
:class:`IntervalUndefinedWarning`, never an exception, so a one-seed first look still has a report.

A proportion of independent trials (a probe's accuracy over its test images) has an exact
interval instead: :func:`binomial_interval` (Clopper & Pearson 1934).

Pure numpy (scipy imported only by :func:`binomial_interval`): no torch, no Lightning, cheap to import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
MIN_SEEDS = 3  # below this a report warns: a percentile interval of 2 values is its min and max


class IntervalUndefinedWarning(RuntimeWarning):
    """A bootstrap interval was asked of fewer than two units: its bounds are NaN."""


def check_level(level: float) -> float:
    """The confidence level, refused unless in (0, 1) (``0.95`` is 95%, not ``95``)."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < float(level) < 1:
        raise ValueError(f"confidence level {level!r} must be a number in (0, 1), e.g. 0.95 for 95%")
    return float(level)


def check_resamples(resamples: int) -> int:
    """The number of bootstrap resamples, refused below 100 (too few for a 95% percentile)."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"bootstrap resamples {resamples!r} must be an integer >= 100 (default {DEFAULT_RESAMPLES})")
    return resamples


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval.

    Attributes:
        estimate: the statistic on the data as observed.
        low, high: the interval's bounds (NaN when undefined: fewer than two units).
        n: the number of resampled units (seeds or images).
        level: the confidence level.
    """

    estimate: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def contains(self, value: float) -> bool:
        """True when ``value`` lies in the interval (False when it is undefined)."""
        return self.defined and self.low <= value <= self.high

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """``0.512 [0.498, 0.530]``; an undefined interval prints as ``[–]``."""
        spec = f"{'+' if signed else ''}.{digits}f"
        bounds = f"[{self.low:{spec}}, {self.high:{spec}}]" if self.defined else "[–]"
        return f"{self.estimate:{spec}} {bounds}"


def _undefined(what: str, n: int) -> None:
    warnings.warn(f"{what}: {n} unit(s), an interval needs at least 2; its bounds are NaN", IntervalUndefinedWarning, stacklevel=3)


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``(resamples, n)`` indices drawn with replacement from ``range(n)``; one row per bootstrap replicate."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_bounds(replicates: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaN replicates ignored)."""
    level = check_level(level)
    replicates = np.asarray(replicates, dtype=float)
    if not np.isfinite(replicates).any():
        return math.nan, math.nan
    low, high = np.nanpercentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def resampled_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Means over the last axis of ``values`` under each row of ``indices``.

    Args:
        values: ``(..., n)``, NaN for a missing unit (skipped in the mean, e.g. a failed run).
        indices: ``(B, n)`` from :func:`resample_indices`.

    Returns:
        ``(B, ...)`` resampled means.
    """
    picked = np.moveaxis(np.asarray(values, dtype=float)[..., indices], -2, 0)  # (B, ..., n)
    with warnings.catch_warnings():  # a resample of only missing units is NaN, skipped by the percentile
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(picked, axis=-1)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> Interval:
    """The mean with its percentile bootstrap interval.

    Args:
        values: ``(n,)`` one value per unit; or ``(s, n)`` values of ``s`` randomisation seeds on
            the same ``n`` images, resampled two-way (seeds and images independently, then the
            mean of the chosen cells), so both sources of variation widen the interval.
        level, resamples, seed: the confidence level, replicates and the resampling seed.

    Returns:
        An :class:`Interval`; NaN bounds (and an :class:`IntervalUndefinedWarning`) when there
        is a single value.
    """
    level = check_level(level)
    array = np.asarray(values, dtype=float)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"bootstrap_mean needs a non-empty 1-D (units) or 2-D (seeds, images) array, got shape {array.shape}")
    estimate = float(np.nanmean(array))
    if array.size < 2:
        _undefined("bootstrap_mean", array.size)
        return Interval(estimate, math.nan, math.nan, array.size, level)
    if array.ndim == 1:
        replicates = resampled_means(array, resample_indices(array.size, resamples, seed))
        return Interval(estimate, *percentile_bounds(replicates, level), array.size, level)
    rows = resample_indices(array.shape[0], resamples, seed)
    cols = resample_indices(array.shape[1], resamples, seed + 1)
    replicates = np.nanmean(array[rows[:, :, None], cols[:, None, :]], axis=(1, 2))
    return Interval(estimate, *percentile_bounds(replicates, level), array.size, level)


def binomial_interval(successes: int, n: int, level: float = DEFAULT_LEVEL) -> Interval:
    """The proportion ``successes / n`` with its exact Clopper-Pearson interval (Clopper & Pearson, Biometrika 1934).

    The bounds are the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    ``Beta(k, n - k + 1)`` and ``Beta(k + 1, n - k)``: the interval holds the true rate in at least
    ``level`` of repeated experiments whatever the rate (conservative, never below the level as the
    normal approximation is near 0 or 1), so a bound above chance is a claim that can be trusted.
    ``low`` is 0 when ``k = 0`` and ``high`` is 1 when ``k = n``.

    Args:
        successes: ``k``, e.g. correctly classified test images (an integer in ``[0, n]``).
        n: the number of independent trials (> 0).
        level: the confidence level.
    """
    level = check_level(level)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"binomial_interval needs a positive integer number of trials, got n={n!r}")
    if isinstance(successes, bool) or not isinstance(successes, (int, np.integer)) or not 0 <= successes <= n:
        raise ValueError(f"binomial_interval needs successes an integer in [0, {n}], got {successes!r}")
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return Interval(successes / n, low, high, int(n), level)


def trapezoid_area(xs: Sequence[float], ys: np.ndarray) -> np.ndarray:
    """Trapezoidal area under ``ys`` (``(..., T)``) over the sorted thresholds ``xs`` (``(T,)``)."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    return ((xs[1:] - xs[:-1]) * (ys[..., 1:] + ys[..., :-1]) / 2).sum(axis=-1)


# Accuracies arrive as float32 (k/n to within 3e-8), so two areas equal in exact arithmetic can differ
# by ~1e-8 (the README's first look: 114.6/300 twice, ranked 2 and 3). Closer areas are one area; a
# real difference is at least the smallest threshold step / (test images x seeds), 2e-7 at 0.05 on
# ImageNet's 50,000 validation images over 5 seeds.
TIE_TOLERANCE = 1e-7


def ranks_of(scores: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Rank positions (0 = best) of the last axis of ``scores``; tied scores share the best of their positions.

    Competition ranking ("1224"): a position is the number of strictly better scores. Two methods
    with the same area (the same masks, say) hold the same rank in every resample, instead of the
    first by name holding first place "100%" of the time; NaN, never better, ranks last. Scores
    within :data:`TIE_TOLERANCE` are equal.
    """
    scores = np.asarray(scores, dtype=float)
    key = np.where(np.isnan(scores), np.inf, scores if lower_is_better else -scores)
    return (key[..., None, :] < key[..., :, None] - TIE_TOLERANCE).sum(axis=-1)


def ranking_stability(replicates: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """How often each method holds each position when the seeds are resampled.

    Args:
        replicates: ``(B, M)`` a score (e.g. AUC) per bootstrap replicate and method, all
            replicates computed on the same resampled seeds for every method.
        lower_is_better: the direction of the score.

    Returns:
        ``(M, M)``: entry ``[m, k]`` is the fraction of replicates in which method ``m`` ranks
        at position ``k`` (0 = best); each row sums to 1 (a column sums to more where methods tie).
    """
    positions = ranks_of(replicates, lower_is_better)  # (B, M)
    methods = positions.shape[1]
    counts = np.zeros((methods, methods))
    for m in range(methods):
        counts[m] = np.bincount(positions[:, m], minlength=methods)
    return counts / max(positions.shape[0], 1)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two paired sequences, ties handled (Kendall 1945).

    ``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` over the ``n0 = n (n - 1) / 2`` pairs, with
    ``C``/``D`` the concordant/discordant pairs and ``n1``/``n2`` the pairs tied in ``x``/``y``.
    1 for the same order, -1 for the reversed order; NaN when either sequence is constant or
    shorter than 2 (no order to compare), as ``scipy.stats.kendalltau``.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau_b needs two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
    upper = np.triu_indices(a.size, k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    untied_a, untied_b = np.count_nonzero(da), np.count_nonzero(db)
    if untied_a == 0 or untied_b == 0:
        return math.nan
    return float((da * db).sum() / math.sqrt(untied_a * untied_b))
