"""The text of report.md: protocol, run counts, per-mode ranking and accuracy tables, failures.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019),
judge a saliency method by the area under the test-accuracy curve of models retrained without
(ROAR) or with only (KAR) its top-ranked features, against the ``random`` baseline. These helpers
turn the analysed evaluations (:mod:`roar.benchmark.evaluations`) into markdown: each mode's AUC
ranking with its bootstrap interval, its difference from random and how stable its rank is when
the seeds are resampled, the per-threshold accuracies, and the protocol choices, run counts and
failures around them. :func:`roar.benchmark.report.write_report` puts them together with the
figures and the warnings into ``report.md``.

Text only: nothing is written to disk here.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from roar.benchmark.curves import AXIS_LABEL, BASELINE, LOWER_IS_BETTER, MODE_TITLE
from roar.benchmark.evaluations import Evaluation, MethodResult
from roar.benchmark.plan import DEFAULT_FILL, REFERENCE_METHOD, REFERENCE_MODE, SPEC_MODES, RunSpec, evaluation_label
from roar.statistics import IntervalUndefinedWarning, bootstrap_mean


# The Runs table's line of the base model on unmasked test images: the shared start of the no-retrain curves
# (counted under "noretrain" it made a ROAD-only grid, of noretrain@noisy_linear alone, list a noretrain run).
BASE_REFERENCE_LABEL = "reference (base model)"


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


def _protocol_lines(config: dict[str, Any], unused: Iterable[str] = ()) -> list[str]:
    # The protocol choices move results (DESIGN.md, "Protocol choices"): list them first, less the
    # ``unused`` ones (the settings of a fill no run used: fill_sigma beside channel-mean runs only).
    protocol = config.get("protocol") if isinstance(config.get("protocol"), dict) else None
    rest = {k: v for k, v in config.items() if k != "protocol"}
    lines = ["## Protocol", ""]
    if protocol:
        skip = set(unused)
        lines += _md_table(("choice", "value"), [(f"`{k}`", f"`{v}`") for k, v in _flatten(protocol) if k not in skip]) + [""]
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


def _mode_section(
    mode: str, analysed: list[tuple[Evaluation, list[MethodResult]]], figures: dict[tuple[str, str], Path], level: float, resamples: int
) -> list[str]:
    lines = [f"## {MODE_TITLE.get(mode, mode)}", ""]
    mine = [(ev, results) for ev, results in analysed if ev.mode == mode]
    if not mine:
        return lines + [f"No {mode} run finished; see Failures.", ""]
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
    fills = list(dict.fromkeys(ev.fill for ev, _ in mine))  # the default fill first (evaluations' order)
    for fill in fills:
        of_fill = [(ev, results) for ev, results in mine if ev.fill == fill]
        for ev, results in of_fill:
            if len(mine) > 1 or ev.fill != DEFAULT_FILL:  # a fill other than the paper's is always named
                lines += [f"### {ev.dataset} / {ev.model}, fill `{ev.fill}`", ""]
            lines += _evaluation_tables(ev, results, level, resamples)
        if (mode, fill) in figures:  # only a figure that was drawn from these runs; one per fill
            label = evaluation_label(mode, fill) if len(fills) > 1 or fill != DEFAULT_FILL else mode
            lines += [f"![{label} curves]({figures[(mode, fill)].name})", ""]
    return lines


def _failures_lines(rows: list[dict[str, Any]], planned: set[str] | None = None) -> list[str]:
    """The failed runs with the end of each traceback. With ``planned`` (the run ids of the command
    that wrote the report), failures it does not plan, left by an earlier grid in the folder, are
    listed apart: running that command again does not retry them."""
    failed = [r for r in rows if r.get("status") == "failed"]
    lines = ["## Failures", ""]
    if not failed:
        return lines + ["None.", ""]
    retried = [r for r in failed if planned is None or _run_id(r) in planned]
    earlier = [r for r in failed if planned is not None and _run_id(r) not in planned]
    if retried:
        lines += [f"{len(retried)} run(s) failed; run the same benchmark command again to retry them.", ""]
        lines += [line for row in retried for line in _failure_lines(row)]
    if earlier:
        lines += [
            f"{len(earlier)} run(s) of an earlier grid in this folder failed; this config does not plan them, so running it again "
            "does not retry them (plan their method, mode and fill again to retry them, or --force to start the folder over).",
            "",
        ]
        lines += [line for row in earlier for line in _failure_lines(row)]
    return lines


def _failure_lines(row: dict[str, Any]) -> list[str]:
    error = (row.get("error") or "no error recorded").rstrip()
    last = error.splitlines()[-1] if error else ""
    tail = "\n".join(error.splitlines()[-40:])  # the end of a traceback says what went wrong
    return [f"### `{_run_id(row)}`", "", f"{last}", "", "```text", tail.replace("```", "'''"), "```", ""]


def _run_id(row: dict[str, Any]) -> str:
    return str(row["run_id"]) if row.get("run_id") else RunSpec.from_dict(row).run_id


def _counts_lines(rows: list[dict[str, Any]]) -> list[str]:
    per_mode: dict[str, dict[str, int]] = defaultdict(lambda: {"done": 0, "failed": 0})
    modes: dict[str, str] = {}
    for row in rows:
        status = row.get("status") or "done"
        if row["method"] == REFERENCE_METHOD and row["mode"] == "noretrain":  # every no-retrain curve's start, of no one mode@fill
            label = BASE_REFERENCE_LABEL
        else:
            label = evaluation_label(str(row["mode"]), DEFAULT_FILL if row["method"] == REFERENCE_METHOD else str(row.get("fill") or DEFAULT_FILL))
        modes[label] = REFERENCE_MODE if label == BASE_REFERENCE_LABEL else str(row["mode"])  # beside the retrained reference
        per_mode[label][status if status in ("done", "failed") else "failed"] += 1
    done = sum(c["done"] for c in per_mode.values())
    failed = sum(c["failed"] for c in per_mode.values())
    lines = ["## Runs", "", f"**{done} done, {failed} failed.**", ""]
    order = sorted(per_mode, key=lambda m: (SPEC_MODES.index(modes[m]) if modes[m] in SPEC_MODES else len(SPEC_MODES), m))
    return lines + _md_table(("mode", "done", "failed"), [(m, per_mode[m]["done"], per_mode[m]["failed"]) for m in order]) + [""]
