"""The mask-leakage probe in the report: a table with exact intervals, ``leakage.png`` and the warnings.

The probe (:mod:`roar.benchmark.leakage`; Rong, Leemann et al., ICML 2022) trains a classifier on
ROAR's 0/1 masks alone. Its test accuracy is a proportion of ``n_test`` independent test images, so
its uncertainty is binomial: each accuracy gets the exact Clopper-Pearson interval at the report's
confidence level (:func:`roar.statistics.binomial_interval`). A probe **leaks** when the whole
interval lies above chance: the mask's shape tells the class beyond what chance explains, and a
retrained ROAR/KAR model can read it. ``random``'s masks are drawn without looking at the image, so
its probe is the reference: a method that leaks where ``random`` does not has a curve that measures
its mask's shape as well as the features it removed.

Each interval is one test at the stated level; a table of many cells will show an occasional false
"leaks" (about ``(1 - level) / 2`` of the cells at chance), which is why ``random`` is shown beside.

Reads ``<out>/leakage.csv`` only: no torch, so the report stays cheap to build.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from roar.benchmark.curves import AXIS_LABEL, BASELINE
from roar.statistics import DEFAULT_LEVEL, Interval, binomial_interval

LEAKAGE_CSV = "leakage.csv"
LEAKAGE_FIGURE = "leakage.png"
LEAKAGE_TITLE = "Mask leakage: a model trained on the masks alone (chance = no leakage)"
# n_test: the test images the probe was scored on (rows written before it was recorded leave it empty)
COLUMNS = ("dataset", "model", "method", "order", "threshold", "seed", "test_acc", "n_test", "chance", "epochs", "seconds", "fingerprint")
ORDERS = ("roar", "kar")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``leakage.csv`` (``[]`` when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def discard(out: str | Path) -> None:
    """Remove ``<out>/leakage.csv`` and ``leakage.png`` (``--force``): probes of the discarded results.

    The report shows whatever ``leakage.csv`` holds, so probes left behind by ``--force`` would
    describe masks of a base model and ranks that are gone (and warn about them).
    """
    for name in (LEAKAGE_CSV, LEAKAGE_FIGURE):
        (Path(out) / name).unlink(missing_ok=True)


def probe_interval(row: dict[str, Any], level: float = DEFAULT_LEVEL) -> Interval | None:
    """The probe's accuracy with its Clopper-Pearson interval; None for a row without ``n_test``."""
    n = row.get("n_test")
    if n in (None, ""):
        return None
    n = int(float(n))
    correct = min(n, max(0, round(float(row["test_acc"]) * n)))  # the accuracy is correct / n, stored as a float
    return binomial_interval(correct, n, level)


def leaks(row: dict[str, Any], level: float = DEFAULT_LEVEL) -> bool | None:
    """True when the probe's whole interval lies above chance; None when the row has no ``n_test``."""
    interval = probe_interval(row, level)
    return None if interval is None else interval.low > float(row["chance"])


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Rows per (dataset, model, order), orders ROAR then KAR."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["dataset"]), str(row["model"]), str(row["order"]))].append(row)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][:2], ORDERS.index(kv[0][2]) if kv[0][2] in ORDERS else len(ORDERS), kv[0][2])))


def _methods(rows: list[dict[str, Any]]) -> list[str]:
    # in the config's order, random last: the reference row closes each table and is drawn on top
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    return sorted(methods, key=lambda m: m == BASELINE)


def _cell(row: dict[str, Any] | None, level: float) -> str:
    if row is None:
        return ""
    interval = probe_interval(row, level)
    if interval is None:  # an older row: its accuracy, no interval to judge it by
        return f"{float(row['test_acc']):.3f} [–]"
    return interval.format(3) + (" **leaks**" if interval.low > float(row["chance"]) else "")


def leakage_section(rows: list[dict[str, Any]], level: float = DEFAULT_LEVEL, figure: str | None = None) -> list[str]:
    """The report's markdown section: probe accuracy [interval] per method (rows) and threshold (columns), per order."""
    lines = [f"## {LEAKAGE_TITLE}", ""]
    if not rows:
        return lines + ["No leakage probes.", ""]
    chances = sorted({float(r["chance"]) for r in rows})
    lines += [
        f"Test accuracy of the benchmark's classifier trained on the 0/1 masks alone (seed {rows[0]['seed']}), with its exact "
        f"{level:.0%} Clopper-Pearson interval over the probe's test images; chance (the test share of the most frequent class) is {', '.join(f'{c:.3f}' for c in chances)}. "
        "**leaks**: the whole interval lies above chance, so the mask's shape tells the class and a retrained ROAR/KAR model "
        "can use it; that method's curve measures the mask as well as the features (Rong, Leemann et al., ICML 2022). "
        f"`{BASELINE}` is the reference: its masks ignore the image, so it should not leak (each cell is one test at "
        f"{level:.0%}: about {(1 - level) / 2:.1%} of the cells at chance are marked by chance alone).",
        "",
    ]
    groups = _groups(rows)
    pairs = {key[:2] for key in groups}
    for (dataset, model, order), mine in groups.items():
        thresholds = sorted({float(r["threshold"]) for r in mine})
        cells = {(str(r["method"]), float(r["threshold"])): r for r in mine}
        where = f"{dataset} / {model}, " if len(pairs) > 1 else ""
        lines += [f"**{where}{order.upper()} masks** (fraction {'removed' if order == 'roar' else 'kept'})", ""]
        lines += ["| method | " + " | ".join(f"{t:g}" for t in thresholds) + " |", "|---" * (len(thresholds) + 1) + "|"]
        for method in _methods(mine):
            lines.append(f"| `{method}` | " + " | ".join(_cell(cells.get((method, t)), level) for t in thresholds) + " |")
        lines.append("")
    if figure:
        lines += [f"![mask leakage]({figure})", ""]
    return lines


def leakage_caveats(rows: list[dict[str, Any]], level: float = DEFAULT_LEVEL) -> list[str]:
    """One warning per (method, order) whose masks leak at a threshold where ``random``'s do not; one if ``random`` leaks."""
    lines = []
    for (dataset, model, order), mine in _groups(rows).items():
        reference = {float(r["threshold"]): leaks(r, level) for r in mine if r["method"] == BASELINE}
        random_leaks = sorted(t for t, leaked in reference.items() if leaked)
        if random_leaks:
            lines.append(
                f"On {dataset}/{model} the `{BASELINE}` {order.upper()} masks leak at threshold {', '.join(f'{t:g}' for t in random_leaks)}: "
                "masks drawn without looking at the image should not tell the class, so the probe there is not to be trusted "
                f"(a {1 - level:.0%} test can also fire by chance; a second leakage_seed tells)."
            )
        for method in _methods(mine):
            if method == BASELINE:
                continue
            hits = [r for r in mine if r["method"] == method and leaks(r, level) and reference.get(float(r["threshold"])) is False]
            if not hits:
                continue
            thresholds = ", ".join(f"{float(r['threshold']):g}" for r in sorted(hits, key=lambda r: float(r["threshold"])))
            worst = max(float(r["test_acc"]) for r in hits)
            lines.append(
                f"On {dataset}/{model} the {order.upper()} masks of `{method}` leak at threshold {thresholds} (probe accuracy up to "
                f"{worst:.3f}, chance {float(hits[0]['chance']):.3f}, {level:.0%} interval above chance) while `{BASELINE}`'s do not: "
                f"its {order.upper()}-order curves measure the mask's shape as well as the features {'removed' if order == 'roar' else 'kept'} "
                "(Rong, Leemann et al., ICML 2022)."
            )
    return lines


def plot_leakage(rows: list[dict[str, Any]], path: str | Path, level: float = DEFAULT_LEVEL, title: str | None = None) -> Path:
    """Probe accuracy against the threshold, one line per method, one panel per order (and dataset/model); a PNG.

    Error bars are the Clopper-Pearson intervals (none for a row without ``n_test``); chance is a
    black dashed line; ``random``, the reference, grey and dashed as in the accuracy curves
    (:func:`roar.benchmark.figures.plot_curves`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from roar.benchmark.figures import _method_colours

    path = Path(path)
    groups = _groups(rows)
    methods = _methods(rows)
    colours = _method_colours(methods)
    pairs = list(dict.fromkeys(key[:2] for key in groups))
    orders = list(dict.fromkeys(key[2] for key in groups))
    legend_outside = len(methods) > 5
    # a bare Figure on an Agg canvas, as figures.py: no pyplot state, no display needed
    fig = Figure(figsize=(5.6 * len(orders) + (2.5 if legend_outside else 0), 4.4 * len(pairs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(pairs), len(orders), squeeze=False)
    for (dataset, model, order), mine in groups.items():
        ax = axes[pairs.index((dataset, model))][orders.index(order)]
        for method in _methods(mine):
            pts = sorted((r for r in mine if r["method"] == method), key=lambda r: float(r["threshold"]))
            xs = [float(r["threshold"]) for r in pts]
            ys = [float(r["test_acc"]) for r in pts]
            bounds = [probe_interval(r, level) for r in pts]
            yerr = [[y - b.low if b else math.nan for y, b in zip(ys, bounds)], [b.high - y if b else math.nan for y, b in zip(ys, bounds)]]
            baseline = method == BASELINE
            ax.errorbar(xs, ys, yerr=yerr, color=colours[method], linestyle="--" if baseline else "-", marker="o", markersize=3.5,
                        linewidth=2 if baseline else 1.5, capsize=2.5, label=method, zorder=3 if baseline else 2)  # fmt: skip
        chance = sorted({float(r["chance"]) for r in mine})
        for c in chance:
            ax.axhline(c, color="black", linestyle="--", linewidth=1, alpha=0.7, label="chance" if c == chance[0] else None, zorder=1)
        ax.set_xlabel(AXIS_LABEL.get(order, "threshold"))
        ax.set_ylabel(f"probe test accuracy (bars: {level:.0%} CI)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(min(0.0, min(chance) - 0.05), 1.02)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{order.upper()} masks" + (f": {dataset} / {model}" if len(pairs) > 1 else ""), fontsize=10)
        if not legend_outside:
            ax.legend(fontsize=8, loc="best")
    if legend_outside:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(textwrap.fill(title or "Mask leakage: a classifier trained on the masks alone", width=60))
    fig.savefig(path, dpi=120)
    return path


def leakage_report(out: str | Path, level: float = DEFAULT_LEVEL, title: str | None = None) -> tuple[list[str], Path | None]:
    """The report's leakage section and ``leakage.png``, when ``<out>/leakage.csv`` exists; else ``([], None)``."""
    out = Path(out)
    rows = read_rows(out / LEAKAGE_CSV)
    if not rows:
        return [], None
    figure = plot_leakage(rows, out / LEAKAGE_FIGURE, level, title=title)
    return leakage_section(rows, level, figure=figure.name), figure


def log_leakage_to_wandb(run: Any, out: str | Path) -> None:
    """The probes as a W&B table (``leakage``) and ``leakage.png`` as an image, when the folder has them."""
    import wandb

    out = Path(out)
    rows = read_rows(out / LEAKAGE_CSV)
    if not rows:
        return
    logged: dict[str, Any] = {"leakage": wandb.Table(columns=list(COLUMNS), data=[[row.get(c, "") for c in COLUMNS] for row in rows])}
    if (out / LEAKAGE_FIGURE).is_file():
        logged["figures/leakage"] = wandb.Image(str(out / LEAKAGE_FIGURE))
    run.log(logged)


__all__ = ["COLUMNS", "LEAKAGE_CSV", "LEAKAGE_FIGURE", "LEAKAGE_TITLE", "discard", "leakage_caveats", "leakage_report", "leakage_section", "leaks", "log_leakage_to_wandb", "plot_leakage", "probe_interval", "read_rows"]
