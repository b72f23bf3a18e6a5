"""The consistency table: do the evaluations in one benchmark rank the methods alike, and at what cost?

Rong, Leemann et al. ("A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022) claim that removal without retraining, with their noisy linear imputation (ROAD), ranks
attribution methods as ROAR does (Hooker et al., NeurIPS 2019) at a fraction of the compute. This
table lets a user check that claim on their own data: the ranking under every evaluation present
(each mode under each fill, see :mod:`roar.benchmark.evaluations`), the summed wall time of its
runs, and Kendall's tau-b between every pair of rankings over the methods both ranked (1: the same
order, -1: reversed, 0: unrelated). The attribution ranks are computed once and shared by every
evaluation, so their time is in none of these sums.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from roar.benchmark.evaluations import Evaluation, MethodResult
from roar.statistics import kendall_tau_b

PAIR_COLUMNS = ("dataset", "model", "evaluation_a", "evaluation_b", "kendall_tau_b", "methods", "seconds_a", "seconds_b")
RANKING_COLUMNS = (
    "dataset", "model", "mode", "fill", "method", "rank", "auc", "auc_low", "auc_high", "delta_random",
    "delta_low", "delta_high", "distinguishable_from_random", "holds_rank", "points", "seeds", "level",
)  # fmt: skip


def _score(evaluation: Evaluation, result: MethodResult) -> float:
    # lower score = better, whatever the mode's direction, so two evaluations' scores compare directly
    return result.auc.estimate if evaluation.lower_is_better else -result.auc.estimate


def consistency(analysed: Sequence[tuple[Evaluation, list[MethodResult]]]) -> dict[str, Any]:
    """The rankings of every evaluation and Kendall's tau-b between every pair of the same (dataset, model).

    Tau is computed on the areas (signed so lower is better), so tied areas are ties (tau-b), over
    the methods with a complete curve in both evaluations; NaN when fewer than two are shared.

    Returns:
        ``{"evaluations": [...], "pairs": [...]}``: per evaluation its name, mode, fill,
        direction, seeds, runs, seconds and ranking (best first); per pair :data:`PAIR_COLUMNS`.
    """
    table = []
    for ev, results in analysed:
        table.append(
            {
                "dataset": ev.dataset, "model": ev.model, "name": ev.name, "mode": ev.mode, "fill": ev.fill,
                "better": "lower" if ev.lower_is_better else "higher", "seeds": len(ev.seeds), "runs": ev.runs,
                "seconds": ev.seconds, "ranking": [r.method for r in results if r.rank is not None],
                "ranks": [r.rank for r in results if r.rank is not None],
            }
        )  # fmt: skip
    pairs = []
    for (ev_a, res_a), (ev_b, res_b) in combinations(analysed, 2):
        if (ev_a.dataset, ev_a.model) != (ev_b.dataset, ev_b.model):
            continue
        score_a = {r.method: _score(ev_a, r) for r in res_a if r.rank is not None}
        score_b = {r.method: _score(ev_b, r) for r in res_b if r.rank is not None}
        shared = sorted(set(score_a) & set(score_b))
        tau = kendall_tau_b([score_a[m] for m in shared], [score_b[m] for m in shared]) if len(shared) >= 2 else math.nan
        pairs.append(dict(zip(PAIR_COLUMNS, (ev_a.dataset, ev_a.model, ev_a.name, ev_b.name, tau, len(shared), ev_a.seconds, ev_b.seconds))))
    return {"evaluations": table, "pairs": pairs}


def ranking_rows(analysed: Sequence[tuple[Evaluation, list[MethodResult]]]) -> list[dict[str, Any]]:
    """One row per (evaluation, method) with :data:`RANKING_COLUMNS`: the numbers behind report.md's tables."""
    rows = []
    for ev, results in analysed:
        for r in results:
            delta = r.delta
            rows.append(
                dict(zip(RANKING_COLUMNS, (
                    ev.dataset, ev.model, ev.mode, ev.fill, r.method, r.rank, r.auc.estimate, r.auc.low, r.auc.high,
                    None if delta is None else delta.estimate, None if delta is None else delta.low, None if delta is None else delta.high,
                    r.distinguishable, r.holds_rank, r.points, len(ev.seeds), r.auc.level,
                )))
            )  # fmt: skip
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: an undefined interval or tau is null
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def write_files(out: Path, analysed: Sequence[tuple[Evaluation, list[MethodResult]]]) -> dict[str, Path]:
    """``rankings.csv`` (:func:`ranking_rows`), ``consistency.csv`` (the pairs) and ``consistency.json`` (all)."""
    table = consistency(analysed)
    paths = {"rankings": out / "rankings.csv", "consistency": out / "consistency.csv", "consistency_json": out / "consistency.json"}
    for path, columns, rows in ((paths["rankings"], RANKING_COLUMNS, ranking_rows(analysed)), (paths["consistency"], PAIR_COLUMNS, table["pairs"])):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()} for row in rows)
    paths["consistency_json"].write_text(json.dumps(_jsonable({**table, "rankings": ranking_rows(analysed)}), indent=2))
    return paths


def _ranking(evaluation: dict[str, Any]) -> str:
    """``a = b > c``: the ranking, best first, methods of equal area joined by ``=``."""
    text = ""
    for i, (method, rank) in enumerate(zip(evaluation["ranking"], evaluation["ranks"])):
        if i:
            text += " = " if rank == evaluation["ranks"][i - 1] else " > "
        text += f"`{method}`"
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def markdown(analysed: Sequence[tuple[Evaluation, list[MethodResult]]], table_fn) -> list[str]:
    """The report's "Consistency" section; ``table_fn(header, rows)`` renders a markdown table."""
    table = consistency(analysed)
    lines = ["## Consistency between evaluations", ""]
    if not table["evaluations"]:
        return lines + ["No evaluations.", ""]
    intro = (
        "The ranking of the methods (complete curves, best first) under every evaluation in these results, "
        "the summed wall time of its runs (shared unmasked reference included; the attribution ranks are "
        "computed once for all evaluations and are in none)"
    )
    if table["pairs"]:
        intro += (
            ", and Kendall's tau-b between every pair of rankings (1: the same order, -1: reversed; – when fewer "
            "than two methods are shared). ROAD (Rong, Leemann et al., ICML 2022) claims that removal without "
            "retraining ranks as ROAR does at a fraction of the cost: this table shows where that holds on these data."
        )
    else:  # nothing to compare: say how to get a comparison rather than describe a tau table that is not there
        intro += (
            ". One evaluation per model here, so no rankings to compare: add modes (`noretrain`, or ROAD's "
            "`noretrain@noisy_linear`) to see whether cheaper evaluations rank the methods as this one does."
        )
    lines += [intro, ""]
    pairs_by_data = sorted({(e["dataset"], e["model"]) for e in table["evaluations"]})
    for dataset, model in pairs_by_data:
        if len(pairs_by_data) > 1:
            lines += [f"### {dataset} / {model}", ""]
        evs = [e for e in table["evaluations"] if (e["dataset"], e["model"]) == (dataset, model)]
        lines += table_fn(
            ("evaluation", "better", "seeds", "runs", "compute", "ranking, best first"),
            [(f"`{e['name']}`", e["better"], e["seeds"], e["runs"], _duration(e["seconds"]), _ranking(e) or "–") for e in evs],
        ) + [""]
        if len(evs) > 1:
            tau = {(p["evaluation_a"], p["evaluation_b"]): p["kendall_tau_b"] for p in table["pairs"] if (p["dataset"], p["model"]) == (dataset, model)}

            def cell(a: str, b: str) -> str:
                value = 1.0 if a == b else tau.get((a, b), tau.get((b, a), math.nan))
                return "–" if math.isnan(value) else f"{value:+.2f}"

            names = [e["name"] for e in evs]
            lines += ["Kendall's tau-b between the rankings:", ""]
            lines += table_fn(("", *(f"`{n}`" for n in names)), [(f"`{a}`", *(cell(a, b) for b in names)) for a in names]) + [""]
    return lines
