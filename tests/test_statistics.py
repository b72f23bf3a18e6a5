"""The report's statistics: bootstrap coverage, Kendall's tau-b, paired differences from random, rank stability."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from roar.benchmark.curves import ranking, summarize
from roar.benchmark.evaluations import analyse, evaluations, lower_is_better, row_fill
from roar.statistics import (
    IntervalUndefinedWarning,
    binomial_interval,
    bootstrap_mean,
    check_level,
    check_resamples,
    kendall_tau_b,
    ranking_stability,
    ranks_of,
    resample_indices,
    resampled_means,
    trapezoid_area,
)

EXPERIMENTS = 400


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_interval_covers_the_true_mean_at_the_stated_rate(level):
    """400 seeded experiments of n = 20 normal values: how often does the interval hold the true mean?

    The percentile bootstrap of a mean is, to first order, mean +- z * s_n / sqrt(n) with the
    plug-in s_n (divisor n), so for normal data its coverage is P(|t_{n-1}| < z sqrt((n-1)/n)):
    0.929 at 95% for n = 20, slightly under the nominal level (Efron & Tibshirani 1993, ch. 13).
    The observed rate over 400 experiments is binomial around that, with sd sqrt(p (1-p) / 400)
    (0.013 at 95%, 0.021 at 80%); 3 sd is the tolerance, so a seeded run fails only if the
    interval is wrong (a wrong quantile, a level applied twice, an unseeded or unpaired draw).
    """
    n, mean = 20, 0.7
    expected = 2 * scipy.stats.t.cdf(scipy.stats.norm.ppf(0.5 + level / 2) * math.sqrt((n - 1) / n), n - 1) - 1
    rng = np.random.default_rng(2024)
    hits = sum(bootstrap_mean(rng.normal(mean, 0.05, n), level, 1000, seed=i).contains(mean) for i in range(EXPERIMENTS))
    sd = math.sqrt(expected * (1 - expected) / EXPERIMENTS)
    assert abs(hits / EXPERIMENTS - expected) <= 3 * sd, (hits / EXPERIMENTS, expected, sd)
    assert abs(expected - level) < 0.03  # the small-sample shortfall is small: the interval means what it says


@pytest.mark.parametrize(("rate", "level"), [(0.5, 0.95), (0.9, 0.95), (0.3, 0.8)])
def test_binomial_interval_covers_the_true_rate_at_least_at_the_stated_rate(rate, level):
    """2000 seeded probes of n = 60 test images, each right with probability ``rate``.

    Clopper-Pearson's coverage is exact to compute: the sum of the binomial probabilities of the
    counts whose interval holds ``rate``; it is never below the level (the interval's guarantee)
    and, at n = 60, within a few points above it. The simulated rate is binomial around it, sd
    sqrt(c (1 - c) / 2000) (about 0.005 at 95%); 3 sd is the tolerance.
    """
    n, experiments = 60, 2000
    covers = np.array([binomial_interval(k, n, level).contains(rate) for k in range(n + 1)])
    exact = float(scipy.stats.binom.pmf(np.arange(n + 1), n, rate)[covers].sum())
    assert level <= exact < level + 0.04, exact
    counts = np.random.default_rng(7).binomial(n, rate, size=experiments)
    observed = covers[counts].mean()  # the interval of each simulated count, looked up
    assert abs(observed - exact) <= 3 * math.sqrt(exact * (1 - exact) / experiments), (observed, exact)


def test_binomial_interval_known_values_and_bad_counts():
    # k = 0 and k = n have closed forms: (alpha/2)^(1/n) and its mirror
    assert binomial_interval(0, 10).high == pytest.approx(1 - 0.025 ** (1 / 10)) and binomial_interval(0, 10).low == 0.0
    assert binomial_interval(10, 10).low == pytest.approx(0.025 ** (1 / 10)) and binomial_interval(10, 10).high == 1.0
    # 5 of 10 at 95%: [0.1871, 0.8129] in Clopper & Pearson's tables; 1 of 2 at 90%: [0.0253, 0.9747]
    five = binomial_interval(5, 10)
    assert (five.estimate, five.n) == (0.5, 10) and (five.low, five.high) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    assert (binomial_interval(1, 2, 0.9).low, binomial_interval(1, 2, 0.9).high) == pytest.approx((0.02532, 0.97468), abs=1e-5)
    # the definition: each bound is the rate at which the observed count is a 2.5% tail
    sixty = binomial_interval(60, 500)
    assert scipy.stats.binom.cdf(60, 500, sixty.high) == pytest.approx(0.025) and scipy.stats.binom.sf(59, 500, sixty.low) == pytest.approx(0.025)
    # the interval narrows as n grows: 95 of 100 and 950 of 1000 are the same rate, not the same certainty
    assert binomial_interval(950, 1000).high - binomial_interval(950, 1000).low < 0.5 * (binomial_interval(95, 100).high - binomial_interval(95, 100).low)
    for bad, n, match in ((11, 10, r"successes an integer in \[0, 10\], got 11"), (-1, 10, "got -1"), (1, 0, "n=0"), (0.5, 10, "got 0.5")):
        with pytest.raises(ValueError, match=match):
            binomial_interval(bad, n)


def test_bootstrap_mean_is_seeded_and_shaped():
    values = np.array([0.61, 0.64, 0.58, 0.66, 0.63])
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again and first.estimate == pytest.approx(values.mean()) and first.n == 5
    assert values.min() <= first.low < first.estimate < first.high <= values.max()
    assert bootstrap_mean(values, level=0.5, seed=3).high - bootstrap_mean(values, level=0.5, seed=3).low < first.high - first.low
    assert bootstrap_mean([0.5, 0.5, 0.5]).format() == "0.500 [0.500, 0.500]"
    # (seeds, images): both sources of variation widen the interval beyond the images' alone
    rng = np.random.default_rng(0)
    grid = rng.normal(0, 1, (4, 30)) + rng.normal(0, 1, (4, 1))  # a large per-seed effect
    two_way = bootstrap_mean(grid)
    one_seed = bootstrap_mean(grid[0] - grid[0].mean() + grid.mean())
    assert two_way.n == 120 and two_way.high - two_way.low > 2 * (one_seed.high - one_seed.low)


def test_a_single_seed_gives_nan_bounds_and_a_warning_never_an_error():
    with pytest.warns(IntervalUndefinedWarning, match="1 unit"):
        single = bootstrap_mean([0.73])
    assert single.estimate == 0.73 and math.isnan(single.low) and math.isnan(single.high) and not single.defined
    assert not single.contains(0.73) and single.format() == "0.730 [–]"
    for bad, match in ((1.5, r"confidence level 1.5 must be a number in \(0, 1\)"), (95, "0.95 for 95%"), (0, "in \\(0, 1\\)")):
        with pytest.raises(ValueError, match=match):
            check_level(bad)
    with pytest.raises(ValueError, match="resamples 10 must be an integer >= 100"):
        check_resamples(10)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_resampled_means_and_areas_by_hand():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 5.0, 7.0]])  # (thresholds, seeds), one missing run
    index = np.array([[0, 0, 0], [1, 2, 2], [2, 2, 2]])
    means = resampled_means(values, index)
    assert means.shape == (3, 2)
    np.testing.assert_allclose(means[:2], [[1.0, 3.0], [2.0, 19 / 3]])
    assert np.isnan(means[2, 0]) and means[2, 1] == 7.0  # only the missing run drawn: NaN, skipped later
    assert resample_indices(4, 50, seed=1).shape == (50, 4) and (resample_indices(4, 50, 1) == resample_indices(4, 50, 1)).all()
    assert trapezoid_area([0, 0.5, 1], np.array([1.0, 0.5, 0.5])) == pytest.approx(0.625)


def test_kendall_tau_b_identical_reversed_and_scipy_with_ties():
    ranking = [0.31, 0.52, 0.18, 0.77, 0.64]
    assert kendall_tau_b(ranking, ranking) == pytest.approx(1.0)
    assert kendall_tau_b(ranking, [-v for v in ranking]) == pytest.approx(-1.0)
    rng = np.random.default_rng(11)
    for size in (2, 5, 9, 30):
        for _ in range(20):
            x, y = rng.integers(0, 4, size), rng.integers(0, 4, size)  # many ties in both
            expected = scipy.stats.kendalltau(x, y).statistic  # tau-b is scipy's default variant
            if math.isnan(expected):
                assert math.isnan(kendall_tau_b(x, y))
            else:
                assert kendall_tau_b(x, y) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))  # a constant ranking has no order
    with pytest.raises(ValueError, match="same length"):
        kendall_tau_b([1, 2], [1, 2, 3])


def test_ranking_stability_counts_positions():
    replicates = np.array([[0.1, 0.5, 0.9], [0.6, 0.5, 0.9], [0.1, 0.5, 0.9], [0.1, 0.95, 0.9]])
    stability = ranking_stability(replicates, lower_is_better=True)
    np.testing.assert_allclose(stability, [[0.75, 0.25, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 0.75]])
    np.testing.assert_allclose(stability.sum(axis=0), 1.0)
    np.testing.assert_allclose(ranking_stability(replicates, lower_is_better=False)[:, ::-1], stability)


# ------------------------------------------------------------------------------ paired differences

THRESHOLDS = (0.25, 0.5, 0.75)


def _rows(seeds: int, mode: str = "roar") -> list[dict]:
    """ROAR rows where each seed shifts every method's accuracy alike (sd 0.04), far more than `equal` differs from `random`."""
    rng = np.random.default_rng(5)
    seed_effect = rng.normal(0, 0.04, seeds)
    slope = {"random": 0.2, "equal": 0.2, "better": 0.35}
    rows = [{"dataset": "d", "model": "m", "method": "unmasked", "mode": "reference", "threshold": 0.0, "seed": s, "test_acc": 0.9 + seed_effect[s], "seconds": 2.0} for s in range(seeds)]
    for method, a in slope.items():
        for t in THRESHOLDS:
            for s in range(seeds):
                jitter = rng.normal(0, 0.002) if method == "equal" else 0.0
                rows.append({"dataset": "d", "model": "m", "method": method, "mode": mode, "threshold": t, "seed": s, "test_acc": 0.9 - a * t + seed_effect[s] + jitter, "seconds": 1.0})
    return rows


def test_paired_interval_separates_a_better_method_and_not_an_equal_one():
    [ev] = evaluations(_rows(seeds=5))
    assert (ev.mode, ev.fill, ev.thresholds, ev.seeds, ev.runs, ev.seconds) == ("roar", "channel_mean", [0.0, *THRESHOLDS], list(range(5)), 50, 55.0)
    results = {r.method: r for r in analyse(ev)}
    assert [r.method for r in analyse(ev)] == ["better", "equal", "random"]
    better, equal = results["better"], results["equal"]
    assert better.distinguishable is True and better.delta.high < 0  # lower ROAR area: better than random
    assert equal.distinguishable is False and equal.delta.contains(0.0)
    # pairing is what makes `better` distinguishable: its own interval overlaps random's
    assert better.auc.high > results["random"].auc.low
    assert better.delta.estimate == pytest.approx(-0.15 * (0.75**2 / 2), abs=1e-9)  # area of the slope difference from 0 to 0.75
    assert better.rank == 1 and better.holds_rank == 1.0 and sum(equal.stability.values()) == pytest.approx(1.0)
    assert 0.2 < equal.holds_rank < 0.8 and equal.stability[1] == 0.0  # equal and random swap ranks 2 and 3, never 1
    assert results["random"].distinguishable is None  # random against itself: not a claim


def test_one_seed_analyses_without_intervals():
    [ev] = evaluations(_rows(seeds=1))
    with pytest.warns(IntervalUndefinedWarning, match="1 seed"):
        results = analyse(ev)
    assert [r.rank for r in results] == [1, 2, 3]
    assert all(math.isnan(r.auc.low) and r.stability == {} and r.distinguishable is None for r in results)


def test_evaluations_group_by_fill_and_direction():
    rows = _rows(seeds=2) + [{**r, "config": {"benchmark": {"protocol": {"fill": "blur"}}}} for r in _rows(seeds=2) if r["method"] != "unmasked"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two seeds: intervals exist, nothing to warn about here
        found = evaluations(rows)
    assert [(e.mode, e.fill) for e in found] == [("roar", "channel_mean"), ("roar", "blur")]
    assert found[1].thresholds[0] == 0.0  # the shared unmasked reference starts the blur curves too
    assert row_fill({"config": '{"protocol": {"fill": "noisy_linear"}}'}) == "noisy_linear" and row_fill({"fill": "blur"}) == "blur"
    assert lower_is_better("roar") and lower_is_better("noretrain") and not lower_is_better("kar") and not lower_is_better("noretrain_kar")


def test_tied_scores_share_the_best_of_their_ranks():
    np.testing.assert_array_equal(ranks_of(np.array([0.3, 0.1, 0.3, 0.5]), lower_is_better=True), [1, 0, 1, 3])
    np.testing.assert_array_equal(ranks_of(np.array([0.3, 0.1, 0.3, np.nan]), lower_is_better=False), [0, 2, 0, 3])
    # Two methods with the same area in every resample: both first every time, not the first by name "100%".
    replicates = np.array([[0.2, 0.2, 0.5], [0.3, 0.3, 0.1]])
    stability = ranking_stability(replicates, lower_is_better=True)
    np.testing.assert_allclose(stability, [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])


def test_areas_equal_but_for_float32_rounding_share_a_rank():
    # The digits grid of the README's first look (300 test images, one seed): KAR accuracies are
    # float32 k/300, so gradient's and IG's areas, both 114.6/300 exactly, differ by ~1e-8.
    def acc(k):
        return float(np.float32(k / 300))

    counts = {"gradient": (224, 270, 285), "integrated_gradients": (210, 277, 285), "random": (100, 200, 270)}
    rows = [{"dataset": "d", "model": "m", "method": "unmasked", "mode": "reference", "threshold": 0.0, "seed": 0, "test_acc": acc(284), "seconds": 1.0}]
    rows += [
        {"dataset": "d", "model": "m", "method": m, "mode": "kar", "threshold": t, "seed": 0, "test_acc": acc(k), "seconds": 1.0}
        for m, ks in counts.items() for t, k in zip((0.3, 0.6, 0.9), ks)
    ]  # fmt: skip
    [ev] = evaluations(rows)
    with pytest.warns(IntervalUndefinedWarning):
        results = {r.method: r.rank for r in analyse(ev)}
    assert results == {"gradient": 1, "integrated_gradients": 1, "random": 3}
    assert {e["method"]: e["rank"] for e in ranking(summarize(rows), "kar")} == results  # the terminal's table
    areas = np.array([[0.382, 0.382 + 1e-8, 0.3]])
    np.testing.assert_array_equal(ranks_of(areas, lower_is_better=False), [[0, 0, 2]])
