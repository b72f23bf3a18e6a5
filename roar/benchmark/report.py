"""The benchmark's report: summary tables, AUC rankings, accuracy curves, report.md and W&B.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019),
compare saliency methods by the test accuracy of models retrained on data with a fraction of each
image's features replaced (Figure 4 of the paper):

* ROAR removes the top ``t`` fraction of features: the faster accuracy falls as ``t`` grows, the
  better the ranking found what the model needs, so a **lower** area under the curve is better;
* KAR keeps only the top ``t`` fraction: the more accuracy the kept features alone support, the
  better, so a **higher** area is better;
* ``noretrain`` removes features like ROAR but evaluates the base model without retraining; lower
  is better too, but a drop there mixes lost information with distribution shift (the reason the
  paper retrains), so it is shown for comparison only.

Every method is judged against the ``random`` baseline: a method whose ROAR curve does not fall
below random's is no better than guessing.

The unmasked reference is shared: its rows (``method="unmasked"``) appear once in the summary as
themselves, and are also copied onto every method's curves, at fraction removed 0 (ROAR), at
fraction kept 1 (KAR) and, for the base model, at 0 on the noretrain curves.

Matplotlib and wandb are imported inside the functions that need them, so importing this module
stays cheap.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roar.benchmark import consistency
from roar.benchmark.caveats import caveats
from roar.benchmark.evaluations import DEFAULT_FILL, Evaluation, MethodResult, analyse, evaluations
from roar.benchmark.plan import MODES, REFERENCE_METHOD, REFERENCE_MODE, SPEC_MODES, RunSpec
from roar.benchmark.results import ResultsStore, write_csv
from roar.statistics import DEFAULT_LEVEL, DEFAULT_RESAMPLES, IntervalUndefinedWarning, bootstrap_mean

# ci_low, ci_high: the percentile bootstrap interval of the mean over seeds (NaN with one seed)
SUMMARY_COLUMNS = ("dataset", "model", "method", "mode", "threshold", "mean", "std", "n", "ci_low", "ci_high")
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
FIGURE_NAMES = {mode: f"{mode}.png" for mode in MODES}


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
    keys = sorted({str(row["settings_key"]) for row in rows if _is_done(row) and row.get("settings_key")})
    if len(keys) > 1:
        raise ValueError(
            f"these results come from {len(keys)} different configurations (settings fingerprints {', '.join(k[:12] for k in keys)}); "
            "refusing to average across them: report each output folder on its own"
        )
    return keys


def summarize(rows: Iterable[dict[str, Any]], level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES) -> list[dict[str, Any]]:
    """Mean, sample std, count and bootstrap interval of test accuracy over seeds, per (dataset, model, method, mode, threshold).

    Only ``done`` rows count. Rows may come from :meth:`ResultsStore.rows` or from ``results.csv``
    (strings are converted).

    The shared references are kept as their own rows (method ``unmasked``, mode ``reference`` or
    ``noretrain``, threshold 0) and copied onto the curves of every method that has rows in a mode:
    the retrained reference at threshold 0 of ROAR (nothing removed) and at threshold 1 of KAR
    (everything kept), the noretrain reference at threshold 0 of noretrain.

    Returns:
        Dicts with :data:`SUMMARY_COLUMNS`; ``std`` is the sample standard deviation (0 when n=1),
        ``ci_low``/``ci_high`` the seeded percentile bootstrap interval of the mean at ``level``
        (NaN when n=1: no interval over one seed). Sorted by dataset, model, mode, method, threshold.
    """
    rows = [row for row in rows if _is_done(row)]
    settings_keys(rows)  # refuses rows of different settings: a mean never spans two configurations
    groups: dict[tuple[str, str, str, str, float], list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        key = (str(row["dataset"]), str(row["model"]), str(row["method"]), str(row["mode"]), round(float(row["threshold"]), 9))
        groups[key].append((int(row["seed"]), float(row["test_acc"])))

    def stats(pairs: list[tuple[int, float]]) -> dict[str, Any]:
        values = [v for _, v in sorted(pairs)]  # seed order: the same interval from the store or from results.csv
        with warnings.catch_warnings():  # one seed: NaN bounds; the report says so once, not per point
            warnings.simplefilter("ignore", IntervalUndefinedWarning)
            ci = bootstrap_mean(values, level, resamples)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": std, "n": len(values), "ci_low": ci.low, "ci_high": ci.high}

    summary = {key: stats(pairs) for key, pairs in groups.items()}
    # Place the references on the curves: (reference mode, curve mode, threshold on that curve).
    placements = ((REFERENCE_MODE, "roar", 0.0), (REFERENCE_MODE, "kar", 1.0), ("noretrain", "noretrain", 0.0), ("noretrain", "noretrain_kar", 1.0))
    pairs = {(dataset, model) for dataset, model, *_ in groups}
    for dataset, model in pairs:
        for ref_mode, mode, threshold in placements:
            ref = summary.get((dataset, model, REFERENCE_METHOD, ref_mode, 0.0))
            if ref is None:
                continue
            methods = {k[2] for k in groups if k[:2] == (dataset, model) and k[3] == mode and k[2] != REFERENCE_METHOD}
            for method in methods:
                summary.setdefault((dataset, model, method, mode, threshold), dict(ref))

    def order(key: tuple[str, str, str, str, float]) -> tuple[Any, ...]:
        dataset, model, method, mode, threshold = key
        return (dataset, model, SPEC_MODES.index(mode) if mode in SPEC_MODES else len(SPEC_MODES), mode, method, threshold)

    return [dict(zip(SUMMARY_COLUMNS[:5], key), **summary[key]) for key in sorted(summary, key=order)]


def write_summary_csv(summary: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write ``summary.csv`` with :data:`SUMMARY_COLUMNS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    return path


def _curves(summary: Iterable[dict[str, Any]], mode: str) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """{(dataset, model): {method: points sorted by threshold}} of one mode, the reference row itself excluded."""
    curves: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in summary:
        if row["mode"] == mode and row["method"] != REFERENCE_METHOD:
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


def ranking(summary: Iterable[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Methods ranked by the area under their mean-accuracy curve, best first.

    ROAR and noretrain rank the lowest area first, KAR the highest (see :func:`area_under_curve`).
    The curves include the reference point. Within each (dataset, model), a curve that lacks a
    threshold another method has (a partial grid) is *incomplete*: its area is not comparable, so
    it is listed after the complete ones with ``rank`` None.

    Returns:
        Dicts with ``dataset, model, method, auc, rank, thresholds`` (number of points),
        ``complete`` and ``delta_random`` (area minus the ``random`` baseline's; None without one).
    """
    _check_mode(mode)
    lower = LOWER_IS_BETTER[mode]
    ranked: list[dict[str, Any]] = []
    for (dataset, model), methods in _curves(summary, mode).items():
        union = {float(r["threshold"]) for pts in methods.values() for r in pts}
        entries = []
        for method, pts in methods.items():
            auc = area_under_curve((r["threshold"], r["mean"]) for r in pts)
            complete = {float(r["threshold"]) for r in pts} == union
            entries.append({"dataset": dataset, "model": model, "method": method, "auc": auc, "thresholds": len(pts), "complete": complete})
        base = next((e["auc"] for e in entries if e["method"] == BASELINE and e["complete"]), None)
        entries.sort(key=lambda e: (not e["complete"], e["auc"] if lower else -e["auc"], e["method"]))
        rank = 0
        for entry in entries:
            rank += entry["complete"]
            entry["rank"] = rank if entry["complete"] else None
            entry["delta_random"] = None if base is None or not entry["complete"] else entry["auc"] - base
        ranked += entries
    return ranked


# ------------------------------------------------------------------------------------------ plots


def _float(value: Any) -> float:
    return math.nan if value in (None, "") else float(value)


def _method_colours(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    # grey is the random baseline's alone, so the tableau greys are left out of the palette
    others = [m for m in methods if m != BASELINE]
    name, greys = ("tab10", {7}) if len(others) <= 9 else ("tab20", {14, 15})
    cmap = colormaps[name]
    palette = [cmap(i) for i in range(cmap.N) if i not in greys]
    return {m: palette[i % len(palette)] for i, m in enumerate(others)} | {BASELINE: "0.45"}


def plot_curves(summary: Iterable[dict[str, Any]], mode: str, path: str | Path, title: str | None = None, level: float = DEFAULT_LEVEL) -> Path:
    """Plot test accuracy against the fraction removed (ROAR, noretrain) or kept (KAR); write a PNG.

    One line per method (mean over seeds, with its bootstrap confidence band over seeds: the
    summary's ``ci_low``..``ci_high``; no band with one seed), one colour each; the ``random``
    baseline grey and dashed. One panel per (dataset, model). A mode without runs still writes a
    PNG that says so, so every report has all its figures.

    Args:
        summary: rows from :func:`summarize`.
        mode: ``roar``, ``kar`` or ``noretrain``.
        path: the PNG to write.
        title: figure title (default: the mode's description).
        level: the confidence level of the summary's intervals (for the axis label).

    Returns:
        ``path``.
    """
    _check_mode(mode)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves = _curves(summary, mode)
    # wrapped, so a long benchmark name never runs off the figure
    title = textwrap.fill(title or MODE_TITLE[mode], width=60)
    # pyplot is avoided on purpose: a bare Figure on an Agg canvas keeps no global state and never
    # needs a display, so plotting is safe in worker processes and on headless machines.
    if not curves:
        fig = Figure(figsize=(6.4, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"no runs for {mode}", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_axis_off()
        fig.suptitle(title)
        fig.savefig(path, dpi=100)
        return path

    methods = sorted({m for per_pair in curves.values() for m in per_pair})
    colours = _method_colours(methods)
    legend_outside = len(methods) > 5
    fig = Figure(figsize=(6.4 * len(curves) + (2.5 if legend_outside else 0), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, ((dataset, model), per_method) in zip(axes, curves.items()):
        # random last, so the baseline is drawn over the others and is easy to find
        for method in sorted(per_method, key=lambda m: (m == BASELINE, m)):
            pts = per_method[method]
            xs = [float(r["threshold"]) for r in pts]
            mean = [float(r["mean"]) for r in pts]
            # an undefined interval (one seed) draws no band there: NaN leaves a gap, the line stays
            low = [_float(r.get("ci_low")) for r in pts]
            high = [_float(r.get("ci_high")) for r in pts]
            baseline = method == BASELINE
            ax.plot(xs, mean, color=colours[method], linestyle="--" if baseline else "-", marker="o", markersize=3.5, linewidth=2 if baseline else 1.5, label=method)
            ax.fill_between(xs, low, high, color=colours[method], alpha=0.15, linewidth=0)
        ax.set_xlabel(AXIS_LABEL[mode])
        ax.set_ylabel(f"test accuracy (band: {level:.0%} CI over seeds)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        if len(curves) > 1:
            ax.set_title(f"{dataset} / {model}", fontsize=10)
        if not legend_outside:
            ax.legend(fontsize=8, loc="best")
    if legend_outside:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return path


# ------------------------------------------------------------------------------------------ tables


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, name + ".")
        else:
            items.append((name, json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else value))
    return items


def _protocol_lines(config: dict[str, Any]) -> list[str]:
    # The protocol choices move results (DESIGN.md, "Protocol choices"): list them first.
    protocol = config.get("protocol") if isinstance(config.get("protocol"), dict) else None
    rest = {k: v for k, v in config.items() if k != "protocol"}
    lines = ["## Protocol", ""]
    if protocol:
        lines += _md_table(("choice", "value"), [(f"`{k}`", f"`{v}`") for k, v in _flatten(protocol)]) + [""]
    if rest:
        lines += ["<details><summary>Full configuration</summary>", ""]
        lines += _md_table(("setting", "value"), [(f"`{k}`", f"`{v}`") for k, v in _flatten(rest)]) + ["", "</details>", ""]
    return lines


def _versus_random(result: MethodResult, lower_is_better: bool) -> str:
    if result.method == BASELINE or result.delta is None:
        return "–"
    if result.distinguishable is None:
        return "undefined (1 seed)"
    if not result.distinguishable:
        return "**not distinguishable from random**"
    return "better than random" if (result.delta.estimate < 0) == lower_is_better else "worse than random"


def _positions(result: MethodResult) -> str:
    # every position held in at least 1% of the resamples, most frequent first
    held = sorted(((f, k) for k, f in result.stability.items() if f >= 0.01), reverse=True)
    return ", ".join(f"{k}: {f:.0%}" for f, k in held) or "–"


def _evaluation_tables(ev: Evaluation, results: list[MethodResult], level: float, resamples: int) -> list[str]:
    table = [
        (
            r.rank if r.rank is not None else "–", f"`{r.method}`", r.auc.format(4),
            "–" if r.delta is None else r.delta.format(4, signed=True), _versus_random(r, ev.lower_is_better),
            _positions(r), r.points if r.complete else f"{r.points} (incomplete)",
        )
        for r in results
    ]  # fmt: skip
    pct = f"{level:.0%}"
    lines = _md_table(("rank", "method", f"AUC [{pct} CI]", f"Δ random [{pct} CI]", "vs random", "rank under resampling", "points"), table) + [""]
    lines += [f"Test accuracy, mean [{pct} CI] (n seeds):", ""]
    thresholds = [f"{t:g}" for t in ev.thresholds]
    acc_rows = []
    with warnings.catch_warnings():  # one seed: "[–]" in the cell; the report's warnings say why
        warnings.simplefilter("ignore", IntervalUndefinedWarning)
        for r in results:
            cells = []
            for values in ev.accuracy[r.method]:
                present = values[~np.isnan(values)]
                cells.append(f"{bootstrap_mean(present, level, resamples).format(3)} ({present.size})" if present.size else "")
            acc_rows.append((f"`{r.method}`", *cells))
    return lines + _md_table(("method", *thresholds), acc_rows) + [""]


def _mode_section(mode: str, analysed: list[tuple[Evaluation, list[MethodResult]]], figures: dict[str, Path], level: float, resamples: int) -> list[str]:
    lines = [f"## {MODE_TITLE.get(mode, mode)}", ""]
    mine = [(ev, results) for ev, results in analysed if ev.mode == mode]
    if not mine:
        return lines + [f"No {mode} runs.", ""]
    better = "lower" if LOWER_IS_BETTER.get(mode, mine[0][0].lower_is_better) else "higher"
    lines += [
        f"Area under the mean test-accuracy curve over the {AXIS_LABEL.get(mode, 'threshold')} (trapezoid, reference point "
        f"included): **{better} is better**; `[low, high]` is its {level:.0%} percentile bootstrap interval over seeds. "
        "Δ random is the area minus the `random` baseline's, its interval paired (both areas on the same resampled seeds): "
        "a method whose interval contains 0 is **not distinguishable from random**. Rank under resampling: how often "
        "the method holds each rank when the seeds are resampled.",
        "",
    ]
    if mode in ("noretrain", "noretrain_kar"):
        lines += ["Without retraining, a drop in accuracy mixes removed information with distribution shift; see ROAR.", ""]
    for ev, results in mine:
        if len(mine) > 1:
            lines += [f"### {ev.dataset} / {ev.model}, fill `{ev.fill}`", ""]
        lines += _evaluation_tables(ev, results, level, resamples)
    if mode in figures:  # only a figure that was drawn from these runs
        lines += [f"![{mode} curves]({figures[mode].name})", ""]
    return lines


def _failures_lines(rows: list[dict[str, Any]]) -> list[str]:
    failed = [r for r in rows if r.get("status") == "failed"]
    lines = ["## Failures", ""]
    if not failed:
        return lines + ["None.", ""]
    lines += [f"{len(failed)} run(s) failed; run the same benchmark command again to retry them.", ""]
    for row in failed:
        error = (row.get("error") or "no error recorded").rstrip()
        last = error.splitlines()[-1] if error else ""
        tail = "\n".join(error.splitlines()[-40:])  # the end of a traceback says what went wrong
        lines += [f"### `{_run_id(row)}`", "", f"{last}", "", "```text", tail.replace("```", "'''"), "```", ""]
    return lines


def _run_id(row: dict[str, Any]) -> str:
    return str(row["run_id"]) if row.get("run_id") else RunSpec.from_dict(row).run_id


def _counts_lines(rows: list[dict[str, Any]]) -> list[str]:
    per_mode: dict[str, dict[str, int]] = defaultdict(lambda: {"done": 0, "failed": 0})
    for row in rows:
        status = row.get("status") or "done"
        per_mode[row["mode"]][status if status in ("done", "failed") else "failed"] += 1
    done = sum(c["done"] for c in per_mode.values())
    failed = sum(c["failed"] for c in per_mode.values())
    lines = ["## Runs", "", f"**{done} done, {failed} failed.**", ""]
    order = sorted(per_mode, key=lambda m: SPEC_MODES.index(m) if m in SPEC_MODES else len(SPEC_MODES))
    return lines + _md_table(("mode", "done", "failed"), [(m, per_mode[m]["done"], per_mode[m]["failed"]) for m in order]) + [""]


def _print_rankings(summary: list[dict[str, Any]], title: str) -> None:
    """One compact table per dataset/model: each method's AUC (and rank) under every evaluation.

    The per-threshold accuracies and every interval are in report.md; the terminal (or a log)
    gets what a person reads first, in as few lines as a grid of a hundred runs deserves.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    ranked = {mode: ranking(summary, mode) for mode in MODES}
    modes = [m for m in MODES if ranked[m]]
    pairs = sorted({(e["dataset"], e["model"]) for m in modes for e in ranked[m]})
    console = Console()
    for dataset, model in pairs:
        entries = {m: {e["method"]: e for e in ranked[m] if (e["dataset"], e["model"]) == (dataset, model)} for m in modes}
        shown = [m for m in modes if entries[m]]
        first = entries[shown[0]]
        methods = sorted(first, key=lambda k: (first[k]["rank"] is None, first[k]["rank"] or 0, k))
        methods += sorted({k for m in shown for k in entries[m]} - set(methods))
        incomplete = any(not e["complete"] for m in shown for e in entries[m].values())
        table = Table(
            title=f"{title}: {dataset}/{model}, area under the accuracy curve (rank)", box=box.SIMPLE_HEAD,
            caption="intervals, accuracies and the consistency table in report.md" + ("; * incomplete curve, not ranked" if incomplete else ""),
        )  # fmt: skip
        table.add_column("method", overflow="fold", min_width=10)
        for mode in shown:
            arrow = "lower better" if LOWER_IS_BETTER[mode] else "higher better"
            table.add_column(f"{mode} ({arrow})", justify="right", no_wrap=True)
        for method in methods:
            cells = []
            for mode in shown:
                e = entries[mode].get(method)
                cells.append("" if e is None else f"{_fmt(e['auc'], 4)} ({e['rank'] if e['rank'] is not None else '–'}){'' if e['complete'] else ' *'}")
            table.add_row(method, *cells)
        console.print(table)


# ------------------------------------------------------------------------------------------ report


def write_report(
    out_dir: str | Path,
    store_or_rows: ResultsStore | Iterable[dict[str, Any]],
    *,
    title: str = "ROAR/KAR benchmark",
    config: dict[str, Any] | None = None,
    print_table: bool = True,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Path]:
    """Write the benchmark's report files into ``out_dir``.

    Files: ``results.csv`` (one row per run), ``summary.csv`` (:data:`SUMMARY_COLUMNS`),
    ``roar.png``, ``kar.png``, ``noretrain.png`` (always, "no runs" when a mode has none; only
    figures of runs are embedded in report.md), ``rankings.csv`` (every evaluation's AUCs with
    intervals, differences from random, ranks and their stability), ``consistency.csv`` and
    ``consistency.json`` (:mod:`roar.benchmark.consistency`) and ``report.md`` (protocol, run
    counts, warnings, per-mode rankings and accuracy tables with intervals, the consistency
    table, failures).

    Args:
        out_dir: the benchmark output folder.
        store_or_rows: the :class:`ResultsStore`, or result rows (dicts like its ``rows()``).
        title: the report's title.
        config: the benchmark configuration, summarised in report.md (its ``protocol`` first).
        print_table: also print the rankings to the terminal as rich tables.
        level: the confidence level of every interval (0.95: 95%).
        resamples: bootstrap resamples per interval (seeded: the same report on every run).

    Returns:
        Paths keyed ``results``, ``summary``, ``roar``, ``kar``, ``noretrain``, ``noretrain_kar``,
        ``rankings``, ``consistency``, ``consistency_json``, ``report``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = store_or_rows.rows() if isinstance(store_or_rows, ResultsStore) else list(store_or_rows)
    summary = summarize(rows, level, resamples)
    paths = {"results": write_csv(rows, out / "results.csv"), "summary": write_summary_csv(summary, out / "summary.csv")}
    for mode in MODES:
        paths[mode] = plot_curves(summary, mode, out / FIGURE_NAMES[mode], title=f"{title}: {MODE_SHORT[mode]}" if title else None, level=level)
    protocol = (config or {}).get("protocol") if isinstance((config or {}).get("protocol"), dict) else {}
    evals = evaluations(rows, default_fill=str(protocol.get("fill") or DEFAULT_FILL))
    with warnings.catch_warnings():  # undefined intervals (one seed) are named once, in the warnings section
        warnings.simplefilter("ignore", IntervalUndefinedWarning)
        analysed = [(ev, analyse(ev, level, resamples)) for ev in evals]
    paths.update(consistency.write_files(out, analysed))
    figures = {mode: paths[mode] for mode in MODES if any(ev.mode == mode for ev in evals)}

    lines = [f"# {title}", ""]
    lines += [
        'Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019). '
        "Each method ranks every feature of every image; ROAR replaces the top fraction with the fill value "
        "and retrains from scratch, KAR keeps only the top fraction. Every curve starts at the unmasked "
        "reference (fraction removed 0, or kept 1). Per-run results: `results.csv`; means over seeds: `summary.csv`.",
        "",
    ]
    lines += _counts_lines(rows)
    cautions = caveats(rows, evals, out)
    if cautions:
        lines += ["## Warnings", "", *(f"- ⚠ {c}" for c in cautions), ""]
    keys = settings_keys(rows)
    if keys:
        lines += [
            f"Fingerprint of every result here: `{keys[0][:16]}` (sha256 of the resolved data, model, trainer and protocol "
            "settings, the base model's bytes and roar's version; each run also records its method's parameters and rank entries).",
            "",
        ]
    if config:
        lines += _protocol_lines(config)
    for mode in [*MODES, *sorted({ev.mode for ev in evals} - set(MODES))]:
        lines += _mode_section(mode, analysed, figures, level, resamples)
    lines += consistency.markdown(analysed, _md_table)
    lines += _failures_lines(rows)
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(lines))
    if print_table:
        _print_rankings(summary, title)
    return paths


def log_summary_to_wandb(
    out_dir: str | Path,
    summary: list[dict[str, Any]],
    *,
    group: str,
    config: dict[str, Any] | None,
    project: str = "roar",
    mode: str = "offline",
) -> Path:
    """Log the benchmark's summary as one W&B run (``job_type="summary"``) in the benchmark's group.

    Each mode's mean curves become a ``wandb.plot.line_series`` chart (``curves/<mode>``), the
    summary a ``wandb.Table`` (``summary``), the rankings a table (``ranking``) and each AUC a
    summary value (``auc/<mode>/<method>``). Offline by default: files under ``out_dir/wandb``,
    uploaded later with ``wandb sync``.

    Returns:
        The W&B run's folder.
    """
    import wandb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = dict(project=project, group=group, job_type="summary", name=f"{group}-summary", dir=str(out), config=config or {}, mode=mode)
    try:
        run = wandb.init(**kwargs, reinit="create_new")  # never log into a run someone else left open
    except (TypeError, ValueError):  # wandb < 0.19.10 knows only booleans
        run = wandb.init(**kwargs, reinit=True)
    try:
        run_dir = Path(run.dir).parent
        rank_rows = []
        for curve_mode in MODES:
            curves = _curves(summary, curve_mode)
            for (dataset, model), per_method in curves.items():
                # one benchmark folder is one (dataset, model); name the pair only when there are several
                suffix = "" if len(curves) == 1 else f"/{dataset}/{model}"
                methods = list(per_method)
                chart = wandb.plot.line_series(
                    xs=[[float(r["threshold"]) for r in per_method[m]] for m in methods],
                    ys=[[float(r["mean"]) for r in per_method[m]] for m in methods],
                    keys=methods,
                    title=MODE_TITLE[curve_mode],
                    xname=AXIS_LABEL[curve_mode],
                )
                run.log({f"curves/{curve_mode}{suffix}": chart})
                for e in ranking([r for pts in per_method.values() for r in pts], curve_mode):
                    rank_rows.append([curve_mode, dataset, model, e["method"], e["auc"], e["rank"], e["complete"]])
                    run.summary[f"auc/{curve_mode}/{e['method']}{suffix}"] = e["auc"]
        run.log(
            {
                "summary": wandb.Table(columns=list(SUMMARY_COLUMNS), data=[[row[c] for c in SUMMARY_COLUMNS] for row in summary]),
                "ranking": wandb.Table(columns=["mode", "dataset", "model", "method", "auc", "rank", "complete"], data=rank_rows),
            }
        )
    finally:
        run.finish()
    return run_dir
