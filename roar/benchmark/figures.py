"""The benchmark's accuracy curves as PNG figures (one per mode and fill), random dashed, bands = intervals."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from roar.benchmark.curves import AXIS_LABEL, BASELINE, MODE_TITLE, _check_mode, _curves, _float
from roar.benchmark.plan import DEFAULT_FILL
from roar.statistics import DEFAULT_LEVEL


def _method_colours(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    # grey is the random baseline's alone, so the tableau greys are left out of the palette
    others = [m for m in methods if m != BASELINE]
    name, greys = ("tab10", {7}) if len(others) <= 9 else ("tab20", {14, 15})
    cmap = colormaps[name]
    palette = [cmap(i) for i in range(cmap.N) if i not in greys]
    return {m: palette[i % len(palette)] for i, m in enumerate(others)} | {BASELINE: "0.45"}


def plot_curves(
    summary: Iterable[dict[str, Any]], mode: str, path: str | Path, title: str | None = None, level: float = DEFAULT_LEVEL, fill: str = DEFAULT_FILL
) -> Path:
    """Plot test accuracy against the fraction removed (ROAR, noretrain) or kept (KAR); write a PNG.

    One line per method (mean over seeds, with its bootstrap confidence band over seeds: the
    summary's ``ci_low``..``ci_high``; no band with one seed), one colour each; the ``random``
    baseline grey and dashed. One panel per (dataset, model). Called for a mode without runs,
    it writes a PNG that says so (the report draws no figure for such a mode).

    Args:
        summary: rows from :func:`summarize`.
        mode: ``roar``, ``kar`` or ``noretrain``.
        path: the PNG to write.
        title: figure title (default: the mode's description).
        level: the confidence level of the summary's intervals (for the axis label).
        fill: the fill whose curves are drawn (the summary's ``fill`` column).

    Returns:
        ``path``.
    """
    _check_mode(mode)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves = _curves(summary, mode, fill)
    # wrapped, so a long benchmark name never runs off the figure
    title = textwrap.fill(title or MODE_TITLE[mode], width=60)
    # pyplot is avoided on purpose: a bare Figure on an Agg canvas keeps no global state and never
    # needs a display, so plotting is safe in worker processes and on headless machines.
    if not curves:
        fig = Figure(figsize=(6.4, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"no runs for {mode}" + ("" if fill == DEFAULT_FILL else f" under fill {fill}"), ha="center", va="center", fontsize=14, transform=ax.transAxes)
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
