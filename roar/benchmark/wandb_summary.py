"""The benchmark's summary as one W&B run: mean curves as line series, the summary and ranking as tables."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from typing import Any

from roar.benchmark.curves import AXIS_LABEL, MODE_TITLE, SUMMARY_COLUMNS, _curves, curve_fills, figure_name, ranking
from roar.benchmark.leakage_report import log_leakage_to_wandb
from roar.benchmark.plan import DEFAULT_FILL, MODES, evaluation_label
from roar.benchmark.wandb_runs import wandb_service


def _cell(text: str) -> Any:
    """A CSV cell as the report wrote it: a number, a boolean, None for an empty cell, else the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def csv_table(path: Path) -> tuple[list[str], list[list[Any]]] | None:
    """The columns and rows of one of the report's CSV files (None when the folder has none)."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.reader(f)
        columns = next(reader, [])
        return columns, [[_cell(c) for c in row] for row in reader]


def figure_files(out: Path, summary: list[dict[str, Any]], default_fill: str = DEFAULT_FILL) -> dict[str, Path]:
    """The report's curve figures of the evaluations ``summary`` has curves of, keyed as the dashboard's
    ``curves/`` and ``auc/`` keys name them (relative to the paper's fill: ``roar``, ``roar@blur``).

    Files are named relative to the grid's default fill (``protocol.fill``): under ``blur`` the blur
    curves are ``roar.png`` and keyed ``roar@blur``, as its curve is. An earlier grid's figures of other
    fills may lie in the folder: they are not this grid's.
    """
    found = {evaluation_label(mode, fill): out / figure_name(mode, fill, default_fill) for mode in MODES for fill in curve_fills(summary, mode, default_fill)}
    return {key: path for key, path in found.items() if path.is_file()}


def summary_run_id(out: Path, group: str) -> str:
    """The W&B id of an output folder's summary run: the same at every resume of its grid, another for
    another folder (W&B ids are unique per project; a group name is not)."""
    return f"summary-{hashlib.sha256(f'{out.resolve()}|{group}'.encode()).hexdigest()[:16]}"


def log_summary_to_wandb(
    out_dir: str | Path,
    summary: list[dict[str, Any]],
    *,
    group: str,
    config: dict[str, Any] | None,
    project: str = "roar",
    mode: str = "offline",
    default_fill: str = DEFAULT_FILL,
) -> Path:
    """Log the benchmark's summary as one W&B run (``job_type="summary"``) in the benchmark's group.

    Each mode's mean curves (under each fill: ``<mode>`` is ``noretrain@noisy_linear`` under
    another fill than ``channel_mean``) become a ``wandb.plot.line_series`` chart (``curves/<mode>``), the
    summary a ``wandb.Table`` (``summary``), the rankings a table (``ranking``) and each AUC a
    summary value (``auc/<mode>/<method>``); the mask-leakage probes, when ``out_dir`` has them, a
    table (``leakage``) and ``leakage.png`` (``figures/leakage``). Offline by default: files under
    ``out_dir/wandb``, uploaded later with ``wandb sync``. ``default_fill``: the grid's ``protocol.fill``,
    whose figures the report names ``roar.png``... (with another, the dashboard found none of them).

    Where ``out_dir`` holds the report (:func:`~roar.benchmark.report.write_report`), its files are
    logged as they are, so the dashboard shows the report's numbers: ``summary.csv`` (``summary``),
    ``rankings.csv`` with its intervals and differences from random (``ranking``),
    ``consistency.csv`` (``consistency``) and each curve figure with its confidence band
    (``figures/<mode>``, ``figures/roar@blur``: keyed as its curve, whatever the file is named).

    Returns:
        The W&B run's folder, its records written: called outside a grid, the service this starts is torn
        down before returning (``run.finish()`` alone returned before a new service had written the
        run's summary, so the folder read back as a run without one).
    """
    with wandb_service(True):  # within a grid, the grid's service: used and left running
        return _log_summary_run(Path(out_dir), summary, group=group, config=config, project=project, mode=mode, default_fill=default_fill)


def _log_summary_run(
    out: Path, summary: list[dict[str, Any]], *, group: str, config: dict[str, Any] | None, project: str, mode: str, default_fill: str
) -> Path:
    import wandb

    out.mkdir(parents=True, exist_ok=True)
    run_id = summary_run_id(out, group)
    # A resumed grid logs its summary again: the folder's summary is one run, the latest. Offline, the
    # earlier summary's files are replaced (also one of another id: a folder moved or copied since);
    # online, the same id resumes the same run.
    for earlier in (out / "wandb").glob("offline-run-*-summary-*"):
        shutil.rmtree(earlier, ignore_errors=True)
    kwargs: dict[str, Any] = dict(
        project=project, group=group, job_type="summary", name=f"{group}-summary", id=run_id, resume="allow", dir=str(out), config=config or {}, mode=mode
    )
    try:
        run = wandb.init(**kwargs, reinit="create_new")  # never log into a run someone else left open
    except (TypeError, ValueError):  # wandb < 0.19.10 knows only booleans
        run = wandb.init(**kwargs, reinit=True)
    try:
        run_dir = Path(run.dir).parent
        rank_rows = []
        for curve_mode, fill in [(m, f) for m in MODES for f in curve_fills(summary, m)]:
            curves = _curves(summary, curve_mode, fill)
            name = evaluation_label(curve_mode, fill)
            for (dataset, model), per_method in curves.items():
                # one benchmark folder is one (dataset, model); name the pair only when there are several
                suffix = "" if len(curves) == 1 else f"/{dataset}/{model}"
                methods = list(per_method)
                chart = wandb.plot.line_series(
                    xs=[[float(r["threshold"]) for r in per_method[m]] for m in methods],
                    ys=[[float(r["mean"]) for r in per_method[m]] for m in methods],
                    keys=methods,
                    title=MODE_TITLE[curve_mode] + ("" if name == curve_mode else f" (fill {fill})"),
                    xname=AXIS_LABEL[curve_mode],
                )
                run.log({f"curves/{name}{suffix}": chart})
                for e in ranking([r for pts in per_method.values() for r in pts], curve_mode, fill):
                    rank_rows.append([name, dataset, model, e["method"], e["auc"], e["rank"], e["complete"]])
                    run.summary[f"auc/{name}/{e['method']}{suffix}"] = e["auc"]
        tables = {
            "summary": (list(SUMMARY_COLUMNS), [[row[c] for c in SUMMARY_COLUMNS] for row in summary]),
            "ranking": (["mode", "dataset", "model", "method", "auc", "rank", "complete"], rank_rows),
        }
        # the report's own files when there: intervals at the grid's confidence level, as in report.md
        for key, name in (("summary", "summary.csv"), ("ranking", "rankings.csv"), ("consistency", "consistency.csv")):
            if (found := csv_table(out / name)) is not None:
                tables[key] = found
        logged: dict[str, Any] = {key: wandb.Table(columns=cols, data=data) for key, (cols, data) in tables.items()}
        logged.update({f"figures/{key}": wandb.Image(str(png)) for key, png in figure_files(out, summary, default_fill).items()})
        run.log(logged)
        log_leakage_to_wandb(run, out)  # the mask-leakage probe, when the folder has one
    finally:
        run.finish()
    return run_dir
