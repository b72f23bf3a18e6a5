"""report.md's statistics from a real ResultsStore: intervals, warnings, missing figures, the consistency table."""

from __future__ import annotations

import csv
import json

import pytest

from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.benchmark.report import write_report
from roar.benchmark.results import ResultsStore

THRESHOLDS = (0.2, 0.6)
SLOPE = {"gradient": 0.8, "random": 0.2}


def _record(store: ResultsStore, method: str, mode: str, threshold: float, seed: int, acc: float, fill: str = "channel_mean", seconds: float = 3.0) -> None:
    config = {"fill": fill, "benchmark": {"protocol": {"fill": "channel_mean"}}}  # as the runner records a mode@fill run
    store.record(RunSpec("digits", "small_cnn", method, mode, threshold, seed, fill), status="done", test_acc=acc, epochs=2, seconds=seconds, config=config)


def _roar_store(tmp_path, seeds: int, reference: float = 0.9, base: float | None = None) -> ResultsStore:
    """A ROAR-only grid (``modes: [roar]``); ``base``: the base model's unmasked accuracy, as a noretrain reference row."""
    store = ResultsStore(tmp_path / "results.db")
    for s in range(seeds):
        _record(store, "unmasked", "reference", 0.0, s, reference + 0.01 * s)
        for method, slope in SLOPE.items():
            for t in THRESHOLDS:
                _record(store, method, "roar", t, s, reference - slope * t + 0.01 * s)
    if base is not None:
        _record(store, "unmasked", "noretrain", 0.0, 0, base, seconds=0.5)
    return store


def _warnings(report: str) -> list[str]:
    if "## Warnings" not in report:
        return []
    return [line for line in report.split("## Warnings")[1].split("\n## ")[0].splitlines() if line.startswith("- ")]


def test_two_seeds_roar_only_warns_and_embeds_only_drawn_figures(tmp_path):
    store = _roar_store(tmp_path, seeds=2, reference=0.80, base=0.96)
    paths = write_report(tmp_path, store, print_table=False)
    report = paths["report"].read_text()
    assert "| rank | method | AUC [95% CI] | Δ random [95% CI] | vs random | rank under resampling | points |" in report
    warnings = _warnings(report)
    assert len(warnings) == 2
    assert "`roar (channel_mean)` on digits/small_cnn ran only 2 seeds" in warnings[0]
    assert "retrained unmasked reference reaches 0.805" in warnings[1] and "base model 0.960 (the noretrain reference run): 15.5 points apart" in warnings[1]
    # modes: [roar]: no kar or noretrain section, and no figure of theirs (once a "no runs" placeholder PNG)
    assert "## KAR" not in report and "## No retraining" not in report and "kar.png" not in report and "noretrain.png" not in report
    assert "![roar curves](roar.png)" in report and "kar" not in paths and not (tmp_path / "kar.png").exists()
    # one evaluation: the consistency section has no tau table and does not describe one
    consistency = report.split("## Consistency between evaluations")[1].split("\n## ")[0]
    assert "One evaluation per model here, so no rankings to compare" in consistency and "tau" not in consistency
    assert "| `roar (channel_mean)` | lower | 2 | 10 | 30.0 s | `gradient` > `random` |" in consistency
    # two seeds 0.01 apart at every point: the accuracy interval is their range
    assert "| `gradient` | 0.805 [0.800, 0.810] (2) | 0.645 [0.640, 0.650] (2) | 0.325 [0.320, 0.330] (2) |" in report


def test_one_seed_reports_undefined_intervals(tmp_path):
    paths = write_report(tmp_path, _roar_store(tmp_path, seeds=1), print_table=False)
    report = paths["report"].read_text()
    [warning] = _warnings(report)
    assert "ran 1 seed: no confidence interval exists" in warning
    assert "| 1 | `gradient` | " in report and "[–] | undefined (1 seed) |" in report and "0.900 [–] (1)" in report
    with paths["rankings"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["gradient", "random"] and rows[0]["auc_low"] == "" and rows[0]["seeds"] == "1"
    summary = paths["summary"].read_text().splitlines()
    assert summary[0].endswith("n,ci_low,ci_high") and summary[1].endswith(",1,nan,nan")


def test_three_seeds_no_warning_and_a_level_setting(tmp_path):
    paths = write_report(tmp_path, _roar_store(tmp_path, seeds=3, base=0.91), print_table=False, level=0.8)
    report = paths["report"].read_text()
    assert _warnings(report) == [] and "## Warnings" not in report  # 3 seeds, reference 1 point from the base model
    assert "AUC [80% CI]" in report and "80% percentile bootstrap interval" in report
    assert "better than random" in report  # gradient's ROAR curve falls faster, the same amount on every seed
    with pytest.raises(ValueError, match="confidence level 95 must be a number in \\(0, 1\\)"):
        BenchmarkConfig(confidence_level=95).validate()
    with pytest.raises(ValueError, match="bootstrap resamples 5 must be an integer >= 100"):
        BenchmarkConfig(bootstrap_resamples=5).validate()


def test_consistency_table_over_modes_and_fills(tmp_path):
    """ROAR and KAR under the default fill agree; a second fill (``roar@blur``, in the same store) that reverses the order gets tau -1."""
    store = ResultsStore(tmp_path / "results.db")
    slopes = {"gradient": 0.8, "integrated_gradients": 0.5, "random": 0.2}
    for s in range(3):
        _record(store, "unmasked", "reference", 0.0, s, 0.9 + 0.01 * s, seconds=10.0)
        for method, slope in slopes.items():
            for t in THRESHOLDS:
                _record(store, method, "roar", t, s, 0.9 - slope * t + 0.01 * s, seconds=10.0)
                _record(store, method, "kar", t, s, 0.9 - (1 - slope) * (1 - t) + 0.01 * s, seconds=10.0)
                _record(store, method, "roar", t, s, 0.9 - (1 - slope) * t + 0.01 * s, fill="blur", seconds=1.0)
    paths = write_report(tmp_path, store, print_table=False, config={"protocol": {"fill": "channel_mean"}})
    table = json.loads(paths["consistency_json"].read_text())
    assert [(e["name"], e["ranking"][0], e["seconds"], e["runs"]) for e in table["evaluations"]] == [
        ("roar (channel_mean)", "gradient", 210.0, 21),  # 18 runs + the 3 shared reference runs at 10 s
        ("roar (blur)", "random", 48.0, 21),  # 18 runs at 1 s + the reference
        ("kar (channel_mean)", "gradient", 210.0, 21),
    ]
    tau = {(p["evaluation_a"], p["evaluation_b"]): p["kendall_tau_b"] for p in table["pairs"]}
    assert tau == {
        ("roar (channel_mean)", "roar (blur)"): pytest.approx(-1.0),
        ("roar (channel_mean)", "kar (channel_mean)"): pytest.approx(1.0),
        ("roar (blur)", "kar (channel_mean)"): pytest.approx(-1.0),
    }
    with paths["consistency"].open(newline="") as f:
        assert [float(r["kendall_tau_b"]) for r in csv.DictReader(f)] == pytest.approx([-1.0, 1.0, -1.0])
    report = paths["report"].read_text()
    section = report.split("## Consistency between evaluations")[1]
    assert "| `roar (blur)` | lower | 3 | 21 | 48.0 s | `random` > `integrated_gradients` > `gradient` |" in section
    assert "| `roar (channel_mean)` | +1.00 | -1.00 | +1.00 |" in section
    assert "Kendall's tau-b between every pair of rankings" in section and "no rankings to compare" not in section
    # each fill has its own ROAR table
    assert "### digits / small_cnn, fill `blur`" in report.split("## KAR")[0]


def _road_only_store(tmp_path) -> ResultsStore:
    """ROAD alone (``modes: [noretrain@noisy_linear, noretrain_kar@noisy_linear]``, ``noretrain: false``)."""
    store = ResultsStore(tmp_path / "results.db")
    _record(store, "unmasked", "noretrain", 0.0, 0, 0.95, seconds=0.5)  # the base model on unmasked images: both curves' start
    for method, slope in SLOPE.items():
        for t in THRESHOLDS:
            _record(store, method, "noretrain", t, 0, 0.95 - slope * t, fill="noisy_linear", seconds=0.5)
            _record(store, method, "noretrain_kar", t, 0, 0.95 - (1 - slope) * (1 - t), fill="noisy_linear", seconds=0.5)
    return store


def test_runs_table_of_road_alone_counts_no_noretrain_run(tmp_path):
    # the base model's unmasked evaluation is a reference, not a run of the default fill's `noretrain`, which this grid never ran
    report = write_report(tmp_path, _road_only_store(tmp_path), print_table=False)["report"].read_text()
    runs = report.split("## Runs")[1].split("\n## ")[0]
    assert "**9 done, 0 failed.**" in runs
    assert [line.split(" | ")[0] for line in runs.splitlines() if line.startswith("| ") and "---" not in line][1:] == [
        "| noretrain@noisy_linear", "| noretrain_kar@noisy_linear", "| reference (base model)",
    ]


def test_an_unfinished_grid_counts_only_the_seeds_its_masked_runs_have(tmp_path):
    """Ctrl-C after the references of seeds 0-2 and the masked runs of seed 0: the curves have one seed.

    The reference of seeds 1 and 2 is no run of the ROAR evaluation: counted, it made the report say
    3 seeds and warn of nothing, and moved the area (mean reference of 3 seeds) off its interval.
    """
    store = ResultsStore(tmp_path / "results.db")
    for s in range(3):
        _record(store, "unmasked", "reference", 0.0, s, 0.9 + 0.03 * s)
    for method, slope in SLOPE.items():
        for t in THRESHOLDS:
            _record(store, method, "roar", t, 0, 0.9 - slope * t)
    paths = write_report(tmp_path, store, print_table=False)
    report = paths["report"].read_text()
    [warning] = _warnings(report)
    assert "`roar (channel_mean)` on digits/small_cnn ran 1 seed: no confidence interval exists" in warning
    assert "| `roar (channel_mean)` | lower | 1 | 5 |" in report  # seeds 1, runs: its 4 and seed 0's reference
    assert "| `gradient` | 0.900 [–] (1) | 0.740 [–] (1) | 0.420 [–] (1) |" in report
    with paths["rankings"].open(newline="") as f:
        gradient = next(r for r in csv.DictReader(f) if r["method"] == "gradient")
    # the area of seed 0's curve alone: 0.2 * (0.9 + 0.74) / 2 + 0.4 * (0.74 + 0.42) / 2
    assert gradient["seeds"] == "1" and float(gradient["auc"]) == pytest.approx(0.396)
    with paths["summary"].open(newline="") as f:
        start = next(r for r in csv.DictReader(f) if (r["method"], r["threshold"]) == ("gradient", "0.0"))
    assert (start["n"], float(start["mean"])) == ("1", pytest.approx(0.9))  # the curve's own seed, as in report.md
    # three seeds at 0.2 but one at 0.6: the fewest seeds of a point is what the warning counts
    for s in (1, 2):
        for method, slope in SLOPE.items():
            _record(store, method, "roar", 0.2, s, 0.9 + 0.03 * s - slope * 0.2)
    [warning] = _warnings(write_report(tmp_path, store, print_table=False)["report"].read_text())
    assert "ran 1 seed at some of its points (of 3: an unfinished grid?)" in warning


def test_methods_of_equal_area_share_a_rank_in_the_table_the_resamples_and_the_consistency_row(tmp_path):
    store = _roar_store(tmp_path, seeds=3)
    for s in range(3):  # "copy" masks as gradient does: the same accuracy in every run
        for t in THRESHOLDS:
            _record(store, "copy", "roar", t, s, 0.9 - SLOPE["gradient"] * t + 0.01 * s)
    report = write_report(tmp_path, store, print_table=False)["report"].read_text()
    rows = {line.split("|")[2].strip(): line.split("|") for line in report.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]}
    assert rows["`copy`"][1].strip() == rows["`gradient`"][1].strip() == "1" and rows["`random`"][1].strip() == "3"
    assert rows["`copy`"][6].strip() == rows["`gradient`"][6].strip() == "1: 100%"
    assert "`copy` = `gradient` > `random`" in report
    with open(tmp_path / "rankings.csv") as f:
        ranks = {r["method"]: (r["rank"], r["holds_rank"]) for r in csv.DictReader(f)}
    assert ranks["copy"] == ranks["gradient"] == ("1", "1.0") and ranks["random"][0] == "3"


def test_rows_of_one_fill_under_two_fill_settings_are_never_compared(tmp_path):
    """A rerun after ``fill_sigma`` changed replaces the blur rows one by one: stopped halfway, the store holds
    ``gradient`` at sigma 4 and ``random`` at sigma 1.5. Their AUCs, Δ random and ranks would compare two controls
    under one heading (and one "fingerprint of every result"), so the report refuses them, naming both settings."""
    from roar.benchmark.curves import summarize

    store = ResultsStore(tmp_path / "results.db")
    shared = {"settings": {"protocol": {"fill": "channel_mean"}}, "base_checkpoint_sha256": "a" * 64}
    for s in range(2):
        store.record(RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, s), status="done", test_acc=0.9, provenance={**shared, "spec": s})
        for method, sigma in (("gradient", 4.0), ("random", 1.5)):
            for t in THRESHOLDS:
                spec = RunSpec("digits", "small_cnn", method, "roar", t, s, "blur")
                provenance = {**shared, "spec": spec.run_id, "fill": {"fill": "blur", "fill_sigma": sigma}}
                store.record(spec, status="done", test_acc=0.9 - SLOPE[method] * t, provenance=provenance)
    message = "fill 'blur' were run with different settings .*fill_sigma=1.5: 4 runs.*fill_sigma=4.0: 4 runs"
    with pytest.raises(ValueError, match=message):
        summarize(store.rows())
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path, store, print_table=False)
    assert not (tmp_path / "report.md").exists()
    # once the rerun is finished every blur row has the new setting: reported as usual
    for s in range(2):
        for t in THRESHOLDS:
            spec = RunSpec("digits", "small_cnn", "random", "roar", t, s, "blur")
            provenance = {**shared, "spec": spec.run_id, "fill": {"fill": "blur", "fill_sigma": 4.0}}
            store.record(spec, status="done", test_acc=0.9 - SLOPE["random"] * t, provenance=provenance)
    report = write_report(tmp_path, store, print_table=False)["report"].read_text()
    assert "| 1 | `gradient` | " in report and "| 2 | `random` | " in report
