"""The benchmark report: summary, AUC, ranking, curves, report.md and the W&B summary run.

The result rows are synthesised by hand: accuracy falls linearly with the fraction removed, at a
per-method slope, plus a per-seed offset of -0.01, 0, +0.01 (so every mean is the line and every
sample std is exactly 0.01). That makes each AUC computable by hand.
"""

from __future__ import annotations

import csv
import math
import struct

import pytest

from roar.benchmark.plan import RunSpec, build_plan
from roar.benchmark.report import SUMMARY_COLUMNS, area_under_curve, log_summary_to_wandb, plot_curves, ranking, summarize, write_report
from roar.benchmark.results import CSV_COLUMNS, ResultsStore

THRESHOLDS = (0.1, 0.5, 0.9)
SEED_OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}
REF = 0.95  # the unmasked retrained reference
NORETRAIN_REF = 0.96  # the base model on unmasked test images
# ROAR: acc = REF - slope * t (steeper = better method); KAR: acc = REF - slope * (1 - t) (flatter = better)
ROAR_SLOPE = {"gradient": 0.8, "integrated_gradients": 0.5, "random": 0.2}
KAR_SLOPE = {"gradient": 0.2, "integrated_gradients": 0.4, "random": 0.6}
NORETRAIN_SLOPE = {"gradient": 0.9, "integrated_gradients": 0.6, "random": 0.3}
FAILED_ERROR = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory"


def _accuracy(spec: RunSpec) -> float:
    offset = SEED_OFFSET[spec.seed]
    if spec.mode == "reference":
        return REF + offset
    if spec.mode == "noretrain":
        return NORETRAIN_REF - (0 if spec.method == "unmasked" else NORETRAIN_SLOPE[spec.method] * spec.threshold)
    if spec.mode == "roar":
        return REF - ROAR_SLOPE[spec.method] * spec.threshold + offset
    return REF - KAR_SLOPE[spec.method] * (1 - spec.threshold) + offset


def _row(spec: RunSpec, **fields) -> dict:
    return {"run_id": spec.run_id, **spec.to_dict(), "epochs": 5, "seconds": 1.5, "checkpoint": None, "error": None, **fields}


def fake_rows(failed: bool = True) -> list[dict]:
    """A complete 3-seed roar+kar+noretrain grid, plus one failed extra seed."""
    plan = build_plan("digits", "small_cnn", list(ROAR_SLOPE), thresholds=THRESHOLDS, seeds=3, modes=("roar", "kar"))
    rows = [_row(spec, status="done", test_acc=_accuracy(spec)) for spec in plan]
    if failed:
        spec = RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 3)
        rows.append(_row(spec, status="failed", test_acc=None, error=FAILED_ERROR))
    return rows


def _find(summary, method, mode, threshold):
    [row] = [r for r in summary if (r["method"], r["mode"], r["threshold"]) == (method, mode, threshold)]
    return row


def _is_png(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert len(data) > 5000  # a real figure, not an empty image
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------ summary


def test_summary_means_stds_counts():
    summary = summarize(fake_rows())
    assert all(tuple(r) == SUMMARY_COLUMNS for r in summary)
    row = _find(summary, "gradient", "roar", 0.5)
    assert row["mean"] == pytest.approx(0.95 - 0.4) and row["std"] == pytest.approx(0.01) and row["n"] == 3  # the failed seed 3 does not count
    row = _find(summary, "random", "kar", 0.1)
    assert row["mean"] == pytest.approx(0.95 - 0.6 * 0.9) and row["std"] == pytest.approx(0.01) and row["n"] == 3
    row = _find(summary, "integrated_gradients", "noretrain", 0.9)
    assert row["mean"] == pytest.approx(0.96 - 0.54) and math.isnan(row["std"]) and row["n"] == 1  # one seed: no std (as no interval), not 0
    # one row per (method, mode, threshold): 3 methods x (3 thresholds + the reference point) x 3 modes, plus the 2 references
    assert len(summary) == 3 * 4 * 4 + 2


def test_summary_places_the_references_on_every_curve():
    summary = summarize(fake_rows())
    for method in ROAR_SLOPE:
        roar = _find(summary, method, "roar", 0.0)  # nothing removed
        kar = _find(summary, method, "kar", 1.0)  # everything kept
        assert (roar["mean"], roar["std"], roar["n"]) == (pytest.approx(REF), pytest.approx(0.01), 3)
        assert (kar["mean"], kar["std"], kar["n"]) == (pytest.approx(REF), pytest.approx(0.01), 3)
        noretrain = _find(summary, method, "noretrain", 0.0)
        assert (noretrain["mean"], noretrain["n"]) == (pytest.approx(NORETRAIN_REF), 1) and math.isnan(noretrain["std"])
    # the references themselves stay in the summary once, under their own names
    assert _find(summary, "unmasked", "reference", 0.0)["n"] == 3
    assert _find(summary, "unmasked", "noretrain", 0.0)["n"] == 1
    # no kar point at 0 and no roar point at 1: the reference sits at the unmasked end only
    assert not [r for r in summary if (r["mode"], r["threshold"]) in {("kar", 0.0), ("roar", 1.0)}]


def test_summary_only_places_references_where_a_mode_has_runs():
    rows = [r for r in fake_rows() if r["mode"] in ("reference", "roar")]
    summary = summarize(rows)
    assert {r["mode"] for r in summary} == {"reference", "roar"}
    assert summarize([]) == []
    assert summarize([r for r in rows if r["mode"] == "reference"]) == [
        {"dataset": "digits", "model": "small_cnn", "method": "unmasked", "mode": "reference", "fill": "channel_mean", "threshold": 0.0, "mean": pytest.approx(REF), "std": pytest.approx(0.01), "n": 3,
         # 3 seeds at REF -0.01, 0, +0.01: all three resampled at the lowest has chance 1/27 > 2.5%, so the 95% interval is the range
         "ci_low": pytest.approx(REF - 0.01), "ci_high": pytest.approx(REF + 0.01)}
    ]


# ------------------------------------------------------------------------------------- AUC, ranking


def test_area_under_curve_by_hand():
    assert area_under_curve([(0, 1), (0.5, 0.5), (1, 0.5)]) == pytest.approx(0.5 * 1.5 / 2 + 0.5 * 1.0 / 2)  # 0.625
    assert area_under_curve([(1, 0.5), (0, 1), (0.5, 0.5)]) == pytest.approx(0.625)  # order does not matter
    assert area_under_curve([(0.1, 0.2), (0.9, 0.2)]) == pytest.approx(0.16)
    assert area_under_curve([(0.3, 0.7)]) == 0.0
    for bad, match in (([], "at least one"), ([(0.1, 0.5), (0.1, 0.6)], "repeated thresholds"), ([(0.1, float("nan"))], "non-finite")):
        with pytest.raises(ValueError, match=match):
            area_under_curve(bad)


def test_ranking_aucs_and_order():
    summary = summarize(fake_rows())
    # ROAR points at 0 (reference), 0.1, 0.5, 0.9 on the line 0.95 - a t: area = 0.95 * 0.9 - a * 0.9^2 / 2
    roar = ranking(summary, "roar")
    assert [e["method"] for e in roar] == ["gradient", "integrated_gradients", "random"]  # lower is better
    assert [e["rank"] for e in roar] == [1, 2, 3]
    expected = {m: 0.855 - a * 0.405 for m, a in ROAR_SLOPE.items()}
    assert {e["method"]: e["auc"] for e in roar} == pytest.approx(expected)
    assert {e["method"]: e["delta_random"] for e in roar} == pytest.approx({m: expected[m] - expected["random"] for m in expected})
    # KAR points at 0.1, 0.5, 0.9, 1 (reference) on 0.95 - b (1 - t): area = 0.95 * 0.9 - b * 0.9^2 / 2
    kar = ranking(summary, "kar")
    assert [e["method"] for e in kar] == ["gradient", "integrated_gradients", "random"]  # higher is better
    assert {e["method"]: e["auc"] for e in kar} == pytest.approx({m: 0.855 - b * 0.405 for m, b in KAR_SLOPE.items()})
    noretrain = ranking(summary, "noretrain")
    assert {e["method"]: e["auc"] for e in noretrain} == pytest.approx({m: 0.96 * 0.9 - c * 0.405 for m, c in NORETRAIN_SLOPE.items()})
    assert all(e["complete"] and e["thresholds"] == 4 for e in roar + kar + noretrain)
    with pytest.raises(ValueError, match="unknown mode 'reference'; valid modes: roar, kar, noretrain"):
        ranking(summary, "reference")


def test_ranking_puts_incomplete_curves_last_without_a_rank():
    # a partial grid: integrated_gradients has no 0.9 yet, so its smaller area would look better than it is
    rows = [r for r in fake_rows() if not (r["method"] == "integrated_gradients" and r["mode"] == "roar" and r["threshold"] == 0.9)]
    roar = ranking(summarize(rows), "roar")
    assert [(e["method"], e["rank"], e["complete"]) for e in roar] == [("gradient", 1, True), ("random", 2, True), ("integrated_gradients", None, False)]
    assert roar[-1]["thresholds"] == 3 and roar[-1]["delta_random"] is None


def test_ranking_per_dataset_and_model():
    rows = fake_rows(failed=False)
    other = [{**r, "dataset": "synthetic_linear", "test_acc": 1.9 - r["test_acc"]} for r in rows]  # reversed order of methods
    roar = ranking(summarize(rows + other), "roar")
    assert [(e["dataset"], e["method"], e["rank"]) for e in roar] == [
        ("digits", "gradient", 1), ("digits", "integrated_gradients", 2), ("digits", "random", 3),
        ("synthetic_linear", "random", 1), ("synthetic_linear", "integrated_gradients", 2), ("synthetic_linear", "gradient", 3),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ plots


def test_plot_curves_writes_pngs(tmp_path):
    summary = summarize(fake_rows())
    sizes = {mode: _is_png(plot_curves(summary, mode, tmp_path / f"{mode}.png", title="digits")) for mode in ("roar", "kar", "noretrain")}
    assert all(w > 300 and h > 300 for w, h in sizes.values())
    # many methods: the legend moves outside, so the figure is wider
    many = [{**r, "method": f"{r['method']}_{i}"} if r["method"] != "unmasked" else r for i in range(3) for r in fake_rows(failed=False)]
    wide = _is_png(plot_curves(summarize(many), "roar", tmp_path / "many.png"))
    assert wide[0] > sizes["roar"][0]
    # a mode without runs still writes a figure that says so
    empty = plot_curves(summarize([r for r in fake_rows() if r["mode"] != "kar"]), "kar", tmp_path / "sub" / "kar.png")
    assert _is_png(empty)
    with pytest.raises(ValueError, match="unknown mode 'keep'"):
        plot_curves(summary, "keep", tmp_path / "x.png")


# ------------------------------------------------------------------------------------------ report


def _store_with(tmp_path, rows) -> ResultsStore:
    store = ResultsStore(tmp_path / "results.db")
    for row in rows:
        fields = {k: row[k] for k in ("status", "test_acc", "epochs", "seconds", "checkpoint", "error")}
        store.record(RunSpec.from_dict(row), config={"protocol": {"granularity": "element"}}, **fields)
    return store


def test_write_report_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the terminal width from here when not a tty
    rows = fake_rows()
    store = _store_with(tmp_path, rows)
    config = {"name": "digits-test", "protocol": {"granularity": "pixel", "score": "abs", "fill": "channel_mean", "target": "predicted"}, "thresholds": list(THRESHOLDS), "seeds": 3}
    paths = write_report(tmp_path, store, title="ROAR on digits", config=config)
    assert all(p.parent == tmp_path and p.is_file() for p in paths.values())
    assert [p.name for p in paths.values()] == [
        "results.csv", "summary.csv", "roar.png", "kar.png", "noretrain.png", "noretrain_kar.png", "rankings.csv",
        "consistency.csv", "consistency.json", "report.md",
    ]  # fmt: skip
    for mode in ("roar", "kar", "noretrain"):
        _is_png(paths[mode])

    with paths["results"].open(newline="") as f:
        reader = csv.DictReader(f)
        results = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS and len(results) == len(rows) == 3 + 10 + 9 + 54 + 1
    with paths["summary"].open(newline="") as f:
        reader = csv.DictReader(f)
        summary = list(reader)
    assert tuple(reader.fieldnames) == SUMMARY_COLUMNS and len(summary) == 3 * 4 * 4 + 2
    row = next(r for r in summary if (r["method"], r["mode"], float(r["threshold"])) == ("gradient", "kar", 1.0))
    assert float(row["mean"]) == pytest.approx(REF) and int(row["n"]) == 3

    report = paths["report"].read_text()
    assert report.startswith("# ROAR on digits")
    assert "**76 done, 1 failed.**" in report
    assert "| `granularity` | `pixel` |" in report  # the protocol
    assert "lower is better" in report and "higher is better" in report
    # ROAR ranking table: gradient first, with its AUC and interval; random last, Δ random 0. Every seed
    # is offset by the same -0.01, 0, +0.01 at every point, so the AUC's interval is 0.9 * (the mean's)
    # and the paired difference from random has no spread at all: the seed effect cancels.
    roar_section = report.split("## ROAR")[1].split("## KAR")[0]
    auc, delta = 0.855 - 0.8 * 0.405, -0.6 * 0.405
    assert f"| 1 | `gradient` | {auc:.4f} [{auc - 0.009:.4f}, {auc + 0.009:.4f}] | {delta:+.4f} [{delta:+.4f}, {delta:+.4f}] | better than random | 1: 100% | 4 |" in roar_section
    assert "| 3 | `random` | " in roar_section and "+0.0000 [+0.0000, +0.0000] | – |" in roar_section
    assert "0.550 [0.540, 0.560] (3)" in roar_section  # gradient at 0.5, the 95% interval of 3 seeds: their range
    # two warnings: the no-retrain curves (both orders) have one seed; roar and kar have 3 (no seed
    # warning) and the reference is 1 point from the base model
    warnings = [line for line in report.split("## Warnings")[1].split("\n## ")[0].splitlines() if line.startswith("- ")]
    assert len(warnings) == 2
    assert "`noretrain (channel_mean)` on digits/small_cnn evaluates the one base model once" in warnings[0]
    assert "`noretrain_kar (channel_mean)` on digits/small_cnn evaluates the one base model once" in warnings[1]
    assert "![roar curves](roar.png)" in report and "![kar curves](kar.png)" in report
    failures = report.split("## Failures")[1]
    assert "`roar/gradient/t0.500/s3/digits/small_cnn`" in failures and "RuntimeError: CUDA out of memory" in failures

    printed = capsys.readouterr().out
    # one compact table: every evaluation's AUC and rank per method, in a handful of lines
    lines = printed.splitlines()
    labels, arrows = next((lines[i].split(), lines[i + 1]) for i, line in enumerate(lines) if line.split()[:1] == ["roar"])
    assert labels == ["roar", "kar", "noretrain", "noretrain_kar"]  # the direction under each, on the next line
    assert [a.strip() for a in arrows.split("method")[1].split(")")] == ["(lower better", "(higher better", "(lower better", "(higher better", ""]
    [gradient_line] = [line for line in lines if line.strip().startswith("gradient")]
    assert f"{0.855 - 0.8 * 0.405:.4f} (1)" in gradient_line, "gradient's ROAR AUC and rank 1"
    assert len(printed.strip().splitlines()) <= 13


def test_write_report_from_rows_and_partial_grids(tmp_path, capsys):
    # rows read back from results.csv (strings everywhere) give the same summary as the store's rows
    rows = fake_rows()
    first = write_report(tmp_path / "a", rows, print_table=False)
    with first["results"].open(newline="") as f:
        from_csv = list(csv.DictReader(f))
    second = write_report(tmp_path / "b", from_csv, print_table=False)
    assert second["summary"].read_text() == first["summary"].read_text()

    # ROAR only, nothing failed: the ROAR figure, none of KAR's or noretrain's
    only_roar = [r for r in rows if r["mode"] in ("reference", "roar") and r["status"] == "done"]
    paths = write_report(tmp_path / "c", only_roar, title="partial", print_table=False)
    _is_png(paths["roar"])
    assert sorted(p.name for p in (tmp_path / "c").glob("*.png")) == ["roar.png"]
    report = paths["report"].read_text()
    # modes the grid never ran get no section; a mode whose every run failed says so
    assert "## ROAR" in report and "## KAR" not in report and "No kar run" not in report and "## No retraining" not in report
    assert report.split("## Failures")[1].strip() == "None."
    assert "## Protocol" not in report  # no config given

    # a one-column table keeps its title and caption on one line each (rich wrapped them to the table's width)
    capsys.readouterr()
    write_report(tmp_path / "c", only_roar, title="partial", print_table=True)
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "partial: digits/small_cnn, area under the accuracy curve (rank)" in printed
    assert "intervals, accuracies and the consistency table in report.md" in printed

    # KAR asked for, every run of it failed: its section says so
    failed_kar = _row(RunSpec("digits", "small_cnn", "gradient", "kar", 0.5, 0), status="failed", test_acc=None, error=FAILED_ERROR)
    report = write_report(tmp_path / "d", [*only_roar, failed_kar], print_table=False)["report"].read_text()
    assert report.split("## KAR")[1].split("\n## ")[0].strip().endswith("No kar run finished; see Failures.")


def test_the_papers_fill_beside_another_default_fill_gets_its_own_figure_and_column(tmp_path, capsys):
    """``protocol.fill blur`` with ``modes: [roar, roar@channel_mean]``: the blur curves are roar.png, the
    channel-mean curves roar@channel_mean.png. Both were named roar.png (one drawn over the other),
    and both columns of the terminal table were headed roar."""
    roar = [r for r in fake_rows(failed=False) if r["mode"] in ("reference", "roar")]
    blurred = [{**r, "fill": "blur", "test_acc": r["test_acc"] - 0.05} for r in roar if r["mode"] == "roar"]
    paths = write_report(tmp_path, [*roar, *blurred], config={"protocol": {"fill": "blur"}}, resamples=50)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["roar.png", "roar@channel_mean.png"]
    assert paths["roar"].name == "roar.png" and paths["roar@channel_mean"].name == "roar@channel_mean.png"
    assert paths["roar"].read_bytes() != paths["roar@channel_mean"].read_bytes()
    lines = capsys.readouterr().out.splitlines()
    assert next(line.split() for line in lines if "roar@channel_mean" in line) == ["roar", "roar@channel_mean"]


def test_the_protocol_table_lists_only_the_settings_of_fills_the_runs_used(tmp_path):
    """fill_sigma is blur's setting, fill_noise_std/tol/max_iter noisy_linear's: beside channel-mean runs
    they moved nothing, and the table listed them as choices of the benchmark."""
    protocol = {"fill": "channel_mean", "granularity": "pixel", "fill_sigma": 2.0, "fill_noise_std": 0.01, "fill_tol": 1e-4, "fill_max_iter": 500}
    roar = [r for r in fake_rows(failed=False) if r["mode"] in ("reference", "roar")]

    def choices(rows) -> set[str]:
        report = write_report(tmp_path, rows, config={"protocol": protocol}, print_table=False, resamples=20)["report"].read_text()
        table = report.split("## Protocol")[1].split("\n\n")[1]
        return {line.split("`")[1] for line in table.splitlines()[2:]}

    assert choices(roar) == {"fill", "granularity"}
    assert choices([*roar, *({**r, "fill": "blur"} for r in roar if r["mode"] == "roar")]) == {"fill", "granularity", "fill_sigma"}
    assert choices([*roar, *({**r, "fill": "noisy_linear"} for r in roar if r["mode"] == "roar")]) == {
        "fill", "granularity", "fill_noise_std", "fill_tol", "fill_max_iter",
    }  # fmt: skip


@pytest.mark.parametrize("columns", [60, 100])
def test_a_narrow_terminal_gets_several_ranking_tables_each_with_the_method_column(tmp_path, capsys, monkeypatch, columns):
    """Six evaluations on 60 or 100 columns: rich dropped the method column and cut every AUC to "0.…"."""
    monkeypatch.setenv("COLUMNS", str(columns))
    rows = fake_rows(failed=False)
    rows += [{**r, "fill": "noisy_linear"} for r in rows if r["mode"] in ("roar", "kar")]
    write_report(tmp_path, rows, resamples=20)
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "…" not in printed and max(map(len, lines)) <= columns
    assert printed.count("(rank)") == 1  # one title, however many tables
    headers = [line for line in lines if line.split()[:1] == ["method"]]
    assert len(headers) >= 2
    for method in ROAR_SLOPE:  # each method in full, in every table
        assert sum(line.split()[:1] == [method] for line in lines) == len(headers)
    labels = [word for line in lines for word in line.split() if word.startswith(("roar", "kar", "noretrain"))]
    assert sorted(labels) == ["kar", "kar@noisy_linear", "noretrain", "noretrain_kar", "roar", "roar@noisy_linear"]  # each once


def test_log_summary_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    summary = summarize(fake_rows())
    run_dir = log_summary_to_wandb(tmp_path, summary, group="digits-test", config={"seeds": 3}, mode="offline")
    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb")), "the offline run's log file is missing"


def test_readme_lists_the_columns_of_results_csv():
    # the output folder's table in README.md is what a user reads results.csv by
    from pathlib import Path

    from roar.benchmark.results import CSV_COLUMNS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [line] = [row for row in readme.splitlines() if row.startswith("| `results.csv` |")]
    assert line.split(" | ")[1].split(" (")[0].split(", ") == list(CSV_COLUMNS)
