"""The sanity report's outputs: ``sanity.csv``, a similarity curve per check and metric, and the terminal tables.

The curves and tables put every method beside the ``noise`` control: a low similarity is
necessary but not sufficient (Binder et al., arXiv 2211.12486, 2022).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roar.sanity.maps import CHECKS, CONTROL, DATA_CHECK
from roar.sanity.report_config import SanityReportConfig
from roar.sanity.settings import SETTING_COLUMNS

CSV_COLUMNS = ("method", "check", "step", "layer", "metric", "mean", "std", "n", "ci_low", "ci_high", *SETTING_COLUMNS)

def how_to_read(control: bool, checks: Sequence[str]) -> str:
    """The closing paragraph under the tables; it names the ``noise`` control and bottom-up
    randomisation only as this run has them, so ``control: false`` is not told to read a column it lacks."""
    text = (
        "How to read this: a method whose maps stay similar to the original after the weights (or the labels) "
        "are randomised fails the sanity check, because its maps do not depend on what the model learned. "
        "A low similarity is necessary but not sufficient"
    )
    if control:
        text += (
            ": the `noise` control, i.i.d. Gaussian maps that never look at the model, scores near zero too and "
            "so also \"passes\" (Binder et al. 2022, arXiv 2211.12486). Read every method against the control"
        )
    else:
        text += (
            " (Binder et al. 2022, arXiv 2211.12486): maps that never look at the model score near zero too. "
            "This run has no `noise` control (sanity.control false) to read the methods against"
        )
    if "bottom_up" in checks:
        text += ", and against bottom-up randomisation, which top-down (cascading) randomisation does not replace."
    elif "cascading" in checks:
        text += "; top-down (cascading) randomisation does not replace bottom-up, which this run left out (sanity.orders)."
    else:
        text += "."
    return text


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})


def read_csv(path: Path) -> list[dict[str, Any]]:
    """``sanity.csv`` back as typed rows."""
    with path.open(newline="") as handle:
        return [
            {
                **row, "step": int(row["step"]), "mean": float(row["mean"]), "std": float(row["std"]), "n": int(row["n"]),
                "ci_low": float(row.get("ci_low") or "nan"), "ci_high": float(row.get("ci_high") or "nan"),
            }  # fmt: skip
            for row in csv.DictReader(handle)
        ]


def plot_curve(rows: Sequence[dict[str, Any]], check: str, metric: str, path: Path, order: str | None = None):
    """Similarity against the randomised layer, one line per method (mean, bootstrap CI band over images), ``noise`` dashed.

    The data check has a single "step" (the permuted-label model): it is drawn as bars. ``order``
    is the randomisation order of an ``smprt`` check (sMPRT runs any order); the other checks are
    their own order. Returns the figure, also saved to ``path``.
    """
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r["check"] == check and r["metric"] == metric]
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    fig = Figure(figsize=(7.2, 4.0), layout="constrained")
    ax = fig.subplots()
    if check == DATA_CHECK:
        means = [next(r["mean"] for r in chosen if r["method"] == m) for m in methods]
        found = [next(r for r in chosen if r["method"] == m) for m in methods]
        # asymmetric error bars: the interval need not be centred on the mean; NaN (one image) draws none
        yerr = [[r["mean"] - r["ci_low"] for r in found], [r["ci_high"] - r["mean"] for r in found]]
        bars = ax.bar(range(len(methods)), means, yerr=yerr, capsize=3, color="tab:blue")
        for bar, method in zip(bars, methods):
            if method == CONTROL:
                bar.set_facecolor("lightgray")
                bar.set_edgecolor("gray")
                bar.set_hatch("//")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_xlabel("method")
        ax.set_title(f"data randomisation: permuted-label vs true-label model ({metric})")
    else:
        layers: list[str] = []
        for method in methods:
            own = sorted((r for r in chosen if r["method"] == method), key=lambda r: r["step"])
            layers = layers or [r["layer"] for r in own]
            steps = [r["step"] for r in own]
            mean = [r["mean"] for r in own]
            low = [r["ci_low"] for r in own]
            high = [r["ci_high"] for r in own]
            style = {"linestyle": "--", "color": "gray"} if method == CONTROL else {}
            (line,) = ax.plot(steps, mean, marker="o", label=method, **style)
            ax.fill_between(steps, low, high, alpha=0.08, color=line.get_color())
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
        order = order or check
        ax.set_xlabel("randomised layer" + (" (cumulative)" if order != "independent" else " (alone)"))
        ax.set_title(f"{check} randomisation" + (f", {order} order" if order != check else "") + f" ({metric})")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.axhline(0.0, color="black", linewidth=0.5)
    reference = "the true-label model's map" if check == DATA_CHECK else "the original map"
    ax.set_ylabel(f"{metric} to {reference}", fontsize=9)
    fig.savefig(path, dpi=110)
    return fig


def _last_step(order: str, layer: str | None) -> str:
    """What is random after the last step of a randomisation order."""
    return {"cascading": "every layer randomised, top down", "bottom_up": "every layer randomised, bottom up"}.get(order, f"only {layer} randomised")


def print_tables(console, rows: Sequence[dict[str, Any]], cfg: SanityReportConfig) -> None:
    """A rich table per method: similarity after the last step of each check, beside the control."""
    from rich.table import Table

    checks = [c for c in CHECKS if any(r["check"] == c for r in rows)]
    last = {c: max(r["step"] for r in rows if r["check"] == c) for c in checks}
    final = {(r["method"], r["check"], r["metric"]): r for r in rows if r["step"] == last[r["check"]]}
    layer = {c: next(r["layer"] for r in rows if r["check"] == c and r["step"] == last[c]) for c in checks}
    what = {order: _last_step(order, layer.get(order)) for order in ("cascading", "bottom_up", "independent")}
    # sMPRT runs any order: after the last independent step only that one layer is random.
    named = " (independent)" if cfg.smprt_order == "independent" else ""
    what["smprt"] = _last_step(cfg.smprt_order, layer.get("smprt")) + named + ", noise-averaged maps"
    what[DATA_CHECK] = "model trained on permuted labels"
    caption = "; ".join(f"{c}: {what[c]}" for c in checks)
    control = CONTROL in cfg.methods
    for method in cfg.methods:
        if method == CONTROL and len(cfg.methods) > 1:
            continue
        table = Table(title=f"{method}: similarity to the original map after the last step", caption=caption)
        table.add_column("check")
        table.add_column("metric")
        table.add_column(method, justify="right")
        if control and method != CONTROL:
            table.add_column(f"{CONTROL} (control)", justify="right", style="dim")
        for check in checks:
            for metric in cfg.metrics:
                cells = [check, metric]
                for name in [method] + ([CONTROL] if control and method != CONTROL else []):
                    row = final.get((name, check, metric))
                    cells.append("-" if row is None else f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]")
                table.add_row(*cells, end_section=metric == cfg.metrics[-1])
        console.print(table)
    images = max((r["n"] for r in rows), default=0)
    console.print(f"(mean [{cfg.confidence_level:.0%} bootstrap interval] over {images} images; step-by-step values in sanity.csv and the curve plots)")
    console.print(how_to_read(control, checks))
