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

The sections of report.md are written by :mod:`roar.benchmark.report_markdown`; this module
puts them together with the figures, the CSV files and the terminal's rankings. Matplotlib and
wandb are imported inside the functions that need them, so importing this module stays cheap.
"""


from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from roar.benchmark import consistency
from roar.benchmark.caveats import caveats
from roar.benchmark.curves import (
    LOWER_IS_BETTER, MODE_SHORT, SUMMARY_COLUMNS, area_under_curve, curve_fills, entry_label, figure_name, ranking, settings_keys, summarize,
    write_summary_csv,
)  # fmt: skip
from roar.benchmark.evaluations import analyse, evaluations
from roar.benchmark.figures import plot_curves
from roar.benchmark.leakage_report import leakage_report
from roar.benchmark.plan import DEFAULT_FILL, MODES, REFERENCE_METHOD, recorded_fill
from roar.benchmark.report_markdown import _counts_lines, _failures_lines, _md_table, _mode_section, _protocol_lines
from roar.benchmark.results import ResultsStore, write_csv
from roar.benchmark.wandb_summary import log_summary_to_wandb
from roar.statistics import DEFAULT_LEVEL, DEFAULT_RESAMPLES, IntervalUndefinedWarning


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _print_rankings(summary: list[dict[str, Any]], title: str, default_fill: str = DEFAULT_FILL) -> None:
    """One compact table per dataset/model: each method's AUC (and rank) under every evaluation.

    The per-threshold accuracies and every interval are in report.md; the terminal (or a log)
    gets what a person reads first, in as few lines as a grid of a hundred runs deserves.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # one column per evaluation: each mode under each of its fills, named as a modes entry names it
    columns = [(m, f) for m in MODES for f in curve_fills(summary, m, default_fill)]
    ranked = {(m, f): ranking(summary, m, f) for m, f in columns}
    modes = [c for c in columns if ranked[c]]
    pairs = sorted({(e["dataset"], e["model"]) for m in modes for e in ranked[m]})
    console = Console()
    for dataset, model in pairs:
        entries = {m: {e["method"]: e for e in ranked[m] if (e["dataset"], e["model"]) == (dataset, model)} for m in modes}
        shown = [m for m in modes if entries[m]]
        first = entries[shown[0]]
        methods = sorted(first, key=lambda k: (first[k]["rank"] is None, first[k]["rank"] or 0, k))
        methods += sorted({k for m in shown for k in entries[m]} - set(methods))
        incomplete = any(not e["complete"] for m in shown for e in entries[m].values())
        heading = f"{title}: {dataset}/{model}, area under the accuracy curve (rank)"
        caption = "intervals, accuracies and the consistency table in report.md" + ("; * incomplete curve, not ranked" if incomplete else "")
        # the label and its direction on two header lines: one line each was ~40 characters per column
        headers = [(entry_label(mode, fill, default_fill), "(lower better)" if LOWER_IS_BETTER[mode] else "(higher better)") for mode, fill in shown]
        cells = {
            method: ["" if (e := entries[c].get(method)) is None else f"{_fmt(e['auc'], 4)} ({e['rank'] if e['rank'] is not None else '–'}){'' if e['complete'] else ' *'}" for c in shown]
            for method in methods
        }  # fmt: skip
        widths = [max(len(label), len(arrow), *(len(cells[m][i]) for m in methods)) for i, (label, arrow) in enumerate(headers)]
        groups = _column_groups(max(len("method"), *map(len, methods)), widths, console.width)
        for part, group in enumerate(groups):
            # a terminal too narrow for every column gets several tables, each with the method column (rich
            # squeezed it away and cut every other column to "0.…" instead)
            # title and caption as lines of their own (wrapped at the console's width): as a table's, rich
            # wrapped them to a narrow table's width, and a table widened to hold them stretched its method column
            if part == 0:
                console.print(heading, highlight=False)
            table = Table(box=box.SIMPLE_HEAD)
            table.add_column("method", overflow="fold", min_width=min(10, max(map(len, methods))))
            for i in group:
                table.add_column("\n".join(headers[i]), justify="right", overflow="fold")
            for method in methods:
                table.add_row(method, *(cells[method][i] for i in group))
            console.print(table)
            if part == len(groups) - 1:
                console.print(caption, highlight=False)


def _column_groups(first: int, widths: list[int], total: int) -> list[list[int]]:
    """Indices of the columns after the first, in consecutive groups that fit ``total`` characters each
    beside the first column (rich's simple box: a column is its width, one space of padding either side and
    one edge or separator character; one edge more closes the table)."""
    groups: list[list[int]] = [[]]
    used = first + 4
    for i, width in enumerate(widths):
        if groups[-1] and used + width + 3 > total:
            groups.append([])
            used = first + 4
        groups[-1].append(i)
        used += width + 3
    return groups


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
    planned: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Write the benchmark's report files into ``out_dir``.

    Files: ``results.csv`` (one row per run), ``summary.csv`` (:data:`SUMMARY_COLUMNS`),
    ``roar.png``, ``kar.png``, ``noretrain.png``, ``noretrain_kar.png`` of the default fill
    (``config``'s ``protocol.fill``), each only when its mode has curves (one left by an earlier grid in
    the folder is removed), and one more per other fill with curves (``noretrain@noisy_linear.png``), ``rankings.csv`` (every evaluation's AUCs with
    intervals, differences from random, ranks and their stability), ``consistency.csv`` and
    ``consistency.json`` (:mod:`roar.benchmark.consistency`) and ``report.md`` (protocol, run
    counts, warnings, per-mode rankings and accuracy tables with intervals, the consistency
    table, failures). When ``out_dir`` holds the mask-leakage probe's ``leakage.csv``, also
    ``leakage.png`` and its section after the KAR curves (:mod:`roar.benchmark.leakage_report`).

    Args:
        out_dir: the benchmark output folder.
        store_or_rows: the :class:`ResultsStore`, or result rows (dicts like its ``rows()``).
        title: the report's title.
        config: the benchmark configuration, summarised in report.md (its ``protocol`` first).
        print_table: also print the rankings to the terminal as rich tables.
        level: the confidence level of every interval (0.95: 95%).
        resamples: bootstrap resamples per interval (seeded: the same report on every run).
        planned: the run ids the writing command plans; failures outside it (an earlier grid's in the
            folder) are listed apart, as not retried by that command.

    Returns:
        Paths keyed ``results``, ``summary``, ``roar``, ``kar``, ``noretrain``, ``noretrain_kar`` (the modes with curves),
        ``mode@fill`` for each other fill's figure, ``rankings``, ``consistency``, ``consistency_json``, ``report`` (and ``leakage``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = store_or_rows.rows() if isinstance(store_or_rows, ResultsStore) else list(store_or_rows)
    protocol = (config or {}).get("protocol") if isinstance((config or {}).get("protocol"), dict) else {}
    default_fill = str(protocol.get("fill") or DEFAULT_FILL)
    summary = summarize(rows, level, resamples, default_fill)
    paths = {"results": write_csv(rows, out / "results.csv"), "summary": write_summary_csv(summary, out / "summary.csv")}
    drawn: dict[tuple[str, str], Path] = {}
    for mode in MODES:  # one figure per fill a mode has curves under, the default fill's named roar.png...
        fills = curve_fills(summary, mode, default_fill)
        if default_fill not in fills:  # a mode this grid did not run (or whose runs all failed): an earlier grid's figure is not its
            (out / figure_name(mode, default_fill, default_fill)).unlink(missing_ok=True)
        for fill in fills:
            heading = MODE_SHORT[mode] if fill == default_fill else f"{MODE_SHORT[mode]}, fill {fill}"
            drawn[(mode, fill)] = plot_curves(
                summary, mode, out / figure_name(mode, fill, default_fill), title=f"{title}: {heading}" if title else None, level=level, fill=fill,
            )  # fmt: skip
            paths[entry_label(mode, fill, default_fill)] = drawn[(mode, fill)]
    evals = evaluations(rows, default_fill=default_fill)
    with warnings.catch_warnings():  # undefined intervals (one seed) are named once, in the warnings section
        warnings.simplefilter("ignore", IntervalUndefinedWarning)
        analysed = [(ev, analyse(ev, level, resamples)) for ev in evals]
    paths.update(consistency.write_files(out, analysed))
    figures = {key: path for key, path in drawn.items() if any((ev.mode, ev.fill) == key for ev in evals)}

    lines = [f"# {title}", ""]
    lines += [
        'Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019). '
        "Each method ranks every feature of every image; ROAR replaces the top fraction with the fill value "
        "and retrains from scratch, KAR keeps only the top fraction. Every curve starts at the unmasked "
        "reference (fraction removed 0, or kept 1). Per-run results: `results.csv`; means over seeds: `summary.csv`.",
        "",
    ]
    lines += _counts_lines(rows)
    cautions = caveats(rows, evals, out, level)
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
        from roar.data.roar import FILL_SETTINGS

        used = {default_fill} | {recorded_fill(row, default_fill) for row in rows if row["method"] != REFERENCE_METHOD}
        unused = {f"fill_{name}" for fill, names in FILL_SETTINGS.items() if fill not in used for name in names}
        lines += _protocol_lines(config, unused)
    leakage_lines, leakage_png = leakage_report(out, level, title=f"{title}: mask leakage" if title else None)  # when leakage.csv exists
    if leakage_png is not None:
        paths["leakage"] = leakage_png
    # A mode the grid never ran (modes: [roar] has no kar row) gets no section; one whose runs all failed says so.
    ran = {str(row["mode"]) for row in rows if row["method"] != REFERENCE_METHOD}
    for mode in [*MODES, *sorted({ev.mode for ev in evals} - set(MODES))]:
        if mode in ran or any(ev.mode == mode for ev in evals):
            lines += _mode_section(mode, analysed, figures, level, resamples)
        if mode == "kar":  # the probe qualifies the ROAR and KAR curves just above it
            lines += leakage_lines
    lines += consistency.markdown(analysed, _md_table)
    lines += _failures_lines(rows, None if planned is None else set(planned))
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(lines))
    if print_table:
        _print_rankings(summary, title, default_fill)
    return paths


__all__ = ["SUMMARY_COLUMNS", "area_under_curve", "log_summary_to_wandb", "plot_curves", "ranking", "settings_keys", "summarize", "write_report", "write_summary_csv"]
