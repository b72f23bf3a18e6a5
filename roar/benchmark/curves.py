"""The benchmark's numbers: accuracy summaries over seeds, curves, areas under them and rankings.

Hooker et al. (NeurIPS 2019) compare saliency methods by the test accuracy of models retrained on
data with a fraction of each image's features replaced; this module turns result rows into the
per-point means (with seeded bootstrap intervals over seeds), the per-mode curves, the area under
each curve and the ranking against the ``random`` baseline. :mod:`roar.benchmark.report` writes
them out; :mod:`roar.benchmark.figures` draws them.
"""

from __future__ import annotations

import csv
import math
import statistics
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from roar.benchmark.plan import DEFAULT_FILL, MODES, REFERENCE_METHOD, REFERENCE_MODE, SPEC_MODES, entry_label, recorded_fill
from roar.statistics import DEFAULT_LEVEL, DEFAULT_RESAMPLES, IntervalUndefinedWarning, bootstrap_mean, ranks_of

# ci_low, ci_high: the percentile bootstrap interval of the mean over seeds (NaN with one seed)
SUMMARY_COLUMNS = ("dataset", "model", "method", "mode", "fill", "threshold", "mean", "std", "n", "ci_low", "ci_high")
BASELINE = "random"
LOWER_IS_BETTER = {"roar": True, "kar": False, "noretrain": True, "noretrain_kar": False}
AXIS_LABEL = {
    "roar": "fraction of features removed", "kar": "fraction of features kept", "noretrain": "fraction of features removed (no retraining)",
    "noretrain_kar": "fraction of features kept (no retraining)",
}  # fmt: skip
MODE_TITLE = {
    "roar": "ROAR: remove the most important features and retrain",
    "kar": "KAR: keep only the most important features and retrain",
    "noretrain": "No retraining: the base model on ROAR-masked test images",
    "noretrain_kar": "No retraining: the base model on KAR-masked test images",
}
MODE_SHORT = {"roar": "ROAR (remove and retrain)", "kar": "KAR (keep and retrain)", "noretrain": "removal without retraining", "noretrain_kar": "keeping without retraining"}


def figure_name(mode: str, fill: str, default_fill: str = DEFAULT_FILL) -> str:
    """The curve figure of one (mode, fill): ``roar.png`` under the grid's default fill, else ``roar@blur.png``."""
    return f"{entry_label(_check_mode(mode), fill, default_fill)}.png"


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


def _is_done(row: dict[str, Any]) -> bool:
    # Rows without a status (hand-made or older CSVs) count as done; a missing accuracy never does.
    return (row.get("status") or "done") == "done" and row.get("test_acc") not in (None, "")


# --------------------------------------------------------------------------------------- summary


def settings_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The fingerprint of the settings and base model that the done rows share (``[]`` for rows without one).

    Raises:
        ValueError: the rows come from more than one configuration, which no table may average.
    """
    rows = [row for row in rows if _is_done(row)]
    keys = sorted({str(row["settings_key"]) for row in rows if row.get("settings_key")})
    if len(keys) > 1:
        raise ValueError(
            f"these results come from {len(keys)} different configurations (settings fingerprints {', '.join(k[:12] for k in keys)}); "
            "refusing to average across them: report each output folder on its own"
        )
    _check_fill_settings(rows)
    return keys


def _check_fill_settings(rows: list[dict[str, Any]]) -> None:
    """Refuse done rows of one fill recorded under different settings of that fill (``fill_sigma``...).

    A fill's own settings are outside the settings key (a changed ``fill_sigma`` reruns that fill's
    runs one by one, README "Reruns"), so a rerun stopped halfway leaves rows of both settings, which
    one table would rank against each other as one control.
    """
    found: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        own = row.get("provenance", {}).get("fill") if isinstance(row.get("provenance"), dict) else None
        if isinstance(own, dict):
            found[str(own.get("fill", recorded_fill(row)))][", ".join(f"{k}={v}" for k, v in sorted(own.items()) if k != "fill")] += 1
    for fill, settings in sorted(found.items()):
        if len(settings) > 1:
            listed = "; ".join(f"{s}: {n} runs" for s, n in sorted(settings.items()))
            raise ValueError(
                f"the runs of fill {fill!r} were run with different settings ({listed}): a rerun after a fill setting changed "
                "stopped before it finished? Resume it (the same command) to rerun the rest, or use a new --out per setting"
            )


def summarize(
    rows: Iterable[dict[str, Any]], level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES, default_fill: str = DEFAULT_FILL
) -> list[dict[str, Any]]:
    """Mean, sample std, count and bootstrap interval of test accuracy over seeds, per (dataset, model, method, mode, fill, threshold).

    Only ``done`` rows count. Rows may come from :meth:`ResultsStore.rows` or from ``results.csv``
    (strings are converted).

    The shared references are kept as their own rows (method ``unmasked``, mode ``reference`` or
    ``noretrain``, threshold 0, fill ``channel_mean``: nothing is removed, whatever the fill) and
    copied onto the curves of every method that has rows in a mode, under each fill: the retrained
    reference at threshold 0 of ROAR (nothing removed) and at threshold 1 of KAR (everything kept),
    the noretrain reference at threshold 0 of noretrain and at 1 of noretrain_kar. A row's fill is
    :func:`~roar.benchmark.plan.recorded_fill` (``default_fill`` for rows that record none).

    Returns:
        Dicts with :data:`SUMMARY_COLUMNS`; ``std`` is the sample standard deviation (NaN when n=1: one seed has no spread to measure, not a spread of 0),
        ``ci_low``/``ci_high`` the seeded percentile bootstrap interval of the mean at ``level``
        (NaN when n=1: no interval over one seed). Sorted by dataset, model, mode, method, threshold.
    """
    rows = [row for row in rows if _is_done(row)]
    settings_keys(rows)  # refuses rows of different settings: a mean never spans two configurations
    groups: dict[tuple[str, str, str, str, str, float], list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        fill = DEFAULT_FILL if row["method"] == REFERENCE_METHOD else recorded_fill(row, default_fill)
        key = (str(row["dataset"]), str(row["model"]), str(row["method"]), str(row["mode"]), fill, round(float(row["threshold"]), 9))
        groups[key].append((int(row["seed"]), float(row["test_acc"])))

    def stats(pairs: list[tuple[int, float]]) -> dict[str, Any]:
        values = [v for _, v in sorted(pairs)]  # seed order: the same interval from the store or from results.csv
        with warnings.catch_warnings():  # one seed: NaN bounds; the report says so once, not per point
            warnings.simplefilter("ignore", IntervalUndefinedWarning)
            ci = bootstrap_mean(values, level, resamples)
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return {"mean": statistics.fmean(values), "std": std, "n": len(values), "ci_low": ci.low, "ci_high": ci.high}

    summary = {key: stats(pairs) for key, pairs in groups.items()}
    # Place the references on the curves: (reference mode, curve mode, threshold on that curve).
    placements = ((REFERENCE_MODE, "roar", 0.0), (REFERENCE_MODE, "kar", 1.0), ("noretrain", "noretrain", 0.0), ("noretrain", "noretrain_kar", 1.0))
    pairs = {(dataset, model) for dataset, model, *_ in groups}
    for dataset, model in pairs:
        for ref_mode, mode, threshold in placements:
            ref = groups.get((dataset, model, REFERENCE_METHOD, ref_mode, DEFAULT_FILL, 0.0))
            if ref is None:
                continue
            curves = {(k[2], k[4]) for k in groups if k[:2] == (dataset, model) and k[3] == mode and k[2] != REFERENCE_METHOD}
            # only the seeds its (mode, fill) ran, as in the report's evaluations (roar.benchmark.evaluations):
            # a reference seed of no masked run (an unfinished grid) is no seed of that curve
            ran: dict[str, set[int]] = defaultdict(set)
            for key, seeds in groups.items():
                if key[:2] == (dataset, model) and key[3] == mode and key[2] != REFERENCE_METHOD:
                    ran[key[4]].update(s for s, _ in seeds)
            for method, fill in curves:
                mine = [(s, v) for s, v in ref if s in ran[fill]]
                if mine:
                    summary.setdefault((dataset, model, method, mode, fill, threshold), stats(mine))

    def order(key: tuple[str, str, str, str, str, float]) -> tuple[Any, ...]:
        dataset, model, method, mode, fill, threshold = key
        return (dataset, model, SPEC_MODES.index(mode) if mode in SPEC_MODES else len(SPEC_MODES), mode, fill != default_fill, fill, method, threshold)

    return [dict(zip(SUMMARY_COLUMNS[:6], key), **summary[key]) for key in sorted(summary, key=order)]


def write_summary_csv(summary: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write ``summary.csv`` with :data:`SUMMARY_COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    return path


def curve_fills(summary: Iterable[dict[str, Any]], mode: str, default_fill: str = DEFAULT_FILL) -> list[str]:
    """The fills a mode has curves under in ``summary``, the default fill first."""
    fills = {str(row.get("fill") or DEFAULT_FILL) for row in summary if row["mode"] == mode and row["method"] != REFERENCE_METHOD}
    return sorted(fills, key=lambda fill: (fill != default_fill, fill))


def _curves(summary: Iterable[dict[str, Any]], mode: str, fill: str = DEFAULT_FILL) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """{(dataset, model): {method: points sorted by threshold}} of one mode under one fill, the reference row itself excluded."""
    curves: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in summary:
        # a summary row without a fill (a summary.csv of roar 0.3.0) is of the paper's fill
        if row["mode"] == mode and (row.get("fill") or DEFAULT_FILL) == fill and row["method"] != REFERENCE_METHOD:
            curves[(row["dataset"], row["model"])][row["method"]].append(row)
    return {pair: {m: sorted(pts, key=lambda r: float(r["threshold"])) for m, pts in sorted(methods.items())} for pair, methods in sorted(curves.items())}


# ------------------------------------------------------------------------------------ AUC, ranking


def area_under_curve(points: Iterable[Sequence[float]]) -> float:
    """Trapezoidal area under a curve of ``(threshold, accuracy)`` points, over the threshold axis.

    For ROAR (and noretrain) a lower area is better: accuracy falls faster when the features a
    method ranks first are removed. For KAR a higher area is better: the features a method ranks
    first keep more accuracy on their own (Hooker et al., NeurIPS 2019). Areas are comparable only
    between curves over the same thresholds (:func:`ranking` flags incomplete curves).

    Args:
        points: ``(x, y)`` pairs in any order; one point has area 0.

    Raises:
        ValueError: no points, a repeated or non-finite x, or a non-finite y.
    """
    pts = sorted((float(x), float(y)) for x, y in points)
    if not pts:
        raise ValueError("area_under_curve needs at least one (threshold, accuracy) point")
    for x, y in pts:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"non-finite point ({x}, {y}) in the curve")
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs):
        raise ValueError(f"repeated thresholds in the curve: {xs}")
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))


def ranking(summary: Iterable[dict[str, Any]], mode: str, fill: str = DEFAULT_FILL) -> list[dict[str, Any]]:
    """Methods ranked by the area under their mean-accuracy curve of ``mode`` under ``fill``, best first.

    ROAR and noretrain rank the lowest area first, KAR the highest (see :func:`area_under_curve`).
    The curves include the reference point. Within each (dataset, model), a curve that lacks a
    threshold another method has (a partial grid) is *incomplete*: its area is not comparable, so
    it is listed after the complete ones with ``rank`` None. Equal areas (to ``statistics.TIE_TOLERANCE``) share a
    rank, the next one skipped (competition ranking, as in report.md).

    Returns:
        Dicts with ``dataset, model, method, auc, rank, thresholds`` (number of points),
        ``complete`` and ``delta_random`` (area minus the ``random`` baseline's; None without one).
    """
    _check_mode(mode)
    lower = LOWER_IS_BETTER[mode]
    ranked: list[dict[str, Any]] = []
    for (dataset, model), methods in _curves(summary, mode, fill).items():
        union = {float(r["threshold"]) for pts in methods.values() for r in pts}
        entries = []
        for method, pts in methods.items():
            auc = area_under_curve((r["threshold"], r["mean"]) for r in pts)
            complete = {float(r["threshold"]) for r in pts} == union
            entries.append({"dataset": dataset, "model": model, "method": method, "auc": auc, "thresholds": len(pts), "complete": complete})
        base = next((e["auc"] for e in entries if e["method"] == BASELINE and e["complete"]), None)
        entries.sort(key=lambda e: (not e["complete"], e["auc"] if lower else -e["auc"], e["method"]))
        # competition ranking, as report.md's (statistics.ranks_of); the complete entries come first, in order
        ranks = iter((ranks_of([e["auc"] for e in entries if e["complete"]], lower) + 1).tolist())
        for entry in entries:
            entry["rank"] = next(ranks) if entry["complete"] else None
            entry["delta_random"] = None if base is None or not entry["complete"] else entry["auc"] - base
        ranked += entries
    return ranked


# ------------------------------------------------------------------------------------------ plots


def _float(value: Any) -> float:
    return math.nan if value in (None, "") else float(value)
