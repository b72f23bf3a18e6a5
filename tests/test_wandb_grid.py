"""What a benchmark grid leaves in W&B, read back from its offline runs as ``wandb sync`` would
upload them: failed retrains marked failed, one summary run per output folder however often the
grid is resumed, and a summary run holding the same numbers as the report's files."""

import os
from pathlib import Path

import pytest

from roar.__main__ import main as roar_main
from roar.benchmark.results import ResultsStore

pytest.importorskip("wandb")
from wandb_records import run_contents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAILING = "{class_path: plugins.FailWhen, init_args: {part: runs/roar/random/t0.500-s1}}"
GRID = [
    "--config", str(ROOT / "configs/benchmark/digits_demo.yaml"), "--trainer.max_epochs", "1",
    "--benchmark.base.max_epochs", "1", "--benchmark.base.min_accuracy", "0", "--benchmark.methods", "[random]",
    "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "2", "--benchmark.modes", "[roar]", "--benchmark.noretrain", "false",
    "--benchmark.logger", "wandb", "--benchmark.stack", "1", "--benchmark.confidence_level", "0.8",
    "--trainer.callbacks", f"[{FAILING}]", "--allow_failures", "true", "--progress", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One grid with a failing retrain (seed 1 of roar/random), run, then resumed with the same command."""
    # A service of an earlier test is not this grid's, and the grid's teardown ends this process's
    # W&B service: restoring the variable would point later tests at a dead one, so it stays unset.
    os.environ.pop("WANDB_SERVICE", None)
    out = tmp_path_factory.mktemp("wandb_grid") / "out"
    assert roar_main(["benchmark", *GRID, "--out", str(out)]) == 0
    first = [run_contents(p)["summary"]["_timestamp"] for p in (out / "wandb").glob("offline-run-*summary*")]
    assert roar_main(["benchmark", *GRID, "--out", str(out)]) == 0  # the resume retries the failed run
    runs = {d.name: run_contents(d) for d in sorted((out / "wandb").glob("offline-run-*"))}
    return out, first, runs


@pytest.mark.slow
def test_a_failed_retrain_is_a_failed_wandb_run(grid):
    out, _, runs = grid
    failed = {row["run_id"] for row in ResultsStore(out / "results.db").failures()}
    assert len(failed) == 1
    exits = {}
    for run in runs.values():
        exits.setdefault(run["name"], set()).add(run["exit"])
    # failed (the resume's attempt; the grid's is under wandb/replaced), never shown as finished; every other run exited cleanly
    assert exits.pop("roar-random-t0.5-s1") == {1}
    assert set().union(*exits.values()) == {0}, exits


@pytest.mark.slow
def test_a_resumed_grid_keeps_one_summary_run_the_latest(grid):
    out, first, runs = grid
    summaries = [run["summary"]["_timestamp"] for run in runs.values() if run["job_type"] == "summary"]
    # one summary per folder, the resume's: a second, stale one in the same group would chart the grid twice
    assert len(first) == 1 and len(summaries) == 1 and summaries[0] > first[0], (summaries, first)
    assert len([name for name, run in runs.items() if run["job_type"] == "base"]) == 1


@pytest.mark.slow
def test_a_retried_run_leaves_one_wandb_run_to_sync_and_sets_the_earlier_one_aside(grid):
    out, _, runs = grid
    names = [run["name"] for run in runs.values()]
    # one run per row of results.db, the base model's and the summary: `wandb sync` uploads no name twice
    assert len(names) == len(set(names)) == len(ResultsStore(out / "results.db").rows()) + 2, sorted(names)
    replaced = [run_contents(p) for p in sorted((out / "wandb" / "replaced").glob("offline-run-*"))]
    assert [(r["name"], r["exit"]) for r in replaced] == [("roar-random-t0.5-s1", 1)]  # the grid's failed attempt, kept


@pytest.mark.slow
def test_force_sets_the_discarded_grids_wandb_runs_aside_and_keeps_the_reused_base_models(grid, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(grid[0], out)
    base = {d.name for d in (out / "wandb").glob("offline-run-*") if run_contents(d)["job_type"] == "base"}
    assert roar_main(["benchmark", *GRID, "--benchmark.thresholds", "[0.25]", "--force", "true", "--out", str(out)]) == 0
    runs = {d.name: run_contents(d) for d in (out / "wandb").glob("offline-run-*")}
    names = sorted(run["name"] for run in runs.values())
    assert not any("t0.5" in name for name in names), names  # the discarded threshold's retrains are not synced
    assert len(names) == len(set(names)) == len(ResultsStore(out / "results.db").rows()) + 2, names
    assert base <= set(runs), "the base model was reused: its run stays with it"
    assert {run_contents(d)["name"] for d in (out / "wandb" / "replaced").glob("offline-run-*")} >= {"roar-random-t0.5-s0", "roar-random-t0.5-s1"}


def _csv(path: Path) -> list[list[str]]:
    import csv

    with path.open(newline="") as f:
        return list(csv.reader(f))


def _same(cell, text: str) -> bool:
    if text == "":
        return cell is None
    try:
        number = float(text)
    except ValueError:
        return cell == text or str(cell) == text  # a name, or a boolean as csv writes it
    return isinstance(cell, (int, float)) and float(cell) == pytest.approx(number, abs=1e-9, nan_ok=True)


@pytest.mark.slow
@pytest.mark.parametrize("key,name", [("summary", "summary.csv"), ("ranking", "rankings.csv")])
def test_the_summary_runs_tables_are_the_reports_files(grid, key, name):
    import json

    out, _, runs = grid
    [(folder, run)] = [(n, r) for n, r in runs.items() if r["job_type"] == "summary"]
    table = json.loads((out / "wandb" / folder / "files" / run["summary"][f"{key}/path"]).read_text())
    header, *rows = _csv(out / name)
    # the grid's confidence level is 0.8: an interval drawn at the default 0.95 differs from summary.csv's
    assert table["columns"] == header
    assert len(table["data"]) == len(rows) > 0
    for got, want in zip(table["data"], rows, strict=True):
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), [(h, g, w) for h, g, w in zip(header, got, want, strict=True) if not _same(g, w)]


@pytest.mark.slow
def test_the_summary_run_shows_the_reports_curve_figures(grid):
    out, _, runs = grid
    [(folder, run)] = [(n, r) for n, r in runs.items() if r["job_type"] == "summary"]
    assert run["summary"]["figures/roar/_type"] == "image-file"
    # the very PNG of the report (mean curve with its band, random dashed), not a redrawing
    assert (out / "wandb" / folder / "files" / run["summary"]["figures/roar/path"]).read_bytes() == (out / "roar.png").read_bytes()


def test_the_summary_table_has_the_reports_intervals_at_the_grids_level(tmp_path, monkeypatch):
    """The run's ``summary`` table is summary.csv: its intervals at the grid's confidence level, not
    redrawn at the default 0.95 (the runner hands the W&B summary a summary of default settings)."""
    import json

    from roar.benchmark.report import log_summary_to_wandb, summarize, write_report

    monkeypatch.setenv("WANDB_SILENT", "true")
    accs = [0.9, 0.7, 0.5, 0.3, 0.8, 0.2]
    rows = [dict(dataset="digits", model="small_cnn", method=m, mode=mode, fill="channel_mean", threshold=t, seed=s, test_acc=a, status="done", epochs=1, seconds=1.0, checkpoint=None)
            for s, a in enumerate(accs) for m, mode, t in (("unmasked", "reference", 0.0), ("random", "roar", 0.5))]  # fmt: skip
    write_report(tmp_path, rows, config={"protocol": {"fill": "channel_mean"}}, print_table=False, level=0.5, resamples=200)
    run_dir = log_summary_to_wandb(tmp_path, summarize(rows), group="g", config={})
    run = run_contents(run_dir)
    table = json.loads((run_dir / "files" / run["summary"]["summary/path"]).read_text())
    header, *want = _csv(tmp_path / "summary.csv")
    assert table["columns"] == header and len(table["data"]) == len(want) == 3
    for got, expected in zip(table["data"], want, strict=True):
        assert all(_same(g, w) for g, w in zip(got, expected, strict=True)), (got, expected)


def _roar_rows(fill: str) -> list[dict]:
    return [dict(dataset="digits", model="small_cnn", method=m, mode=mode, fill=fill, threshold=t, seed=s, test_acc=a, status="done", epochs=1, seconds=1.0, checkpoint=None)
            for s, a in enumerate([0.9, 0.7, 0.5]) for m, mode, t in (("unmasked", "reference", 0.0), ("random", "roar", 0.5))]  # fmt: skip


def test_the_summary_run_shows_only_the_figures_of_evaluations_the_grid_ran(tmp_path, monkeypatch):
    """A roar-only grid in a folder where an earlier grid left kar.png and roar@blur.png: the report removes
    kar.png (it drew a "no runs for kar" placeholder over it once), and the dashboard shows neither."""
    from roar.benchmark.report import log_summary_to_wandb, summarize, write_report

    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = _roar_rows("channel_mean")
    write_report(tmp_path, rows, config={"protocol": {"fill": "channel_mean"}}, print_table=False, resamples=50)
    for earlier in ("kar.png", "roar@blur.png"):  # an earlier grid's
        (tmp_path / earlier).write_bytes((tmp_path / "roar.png").read_bytes())
    paths = write_report(tmp_path, rows, config={"protocol": {"fill": "channel_mean"}}, print_table=False, resamples=50)
    assert "kar" not in paths and not (tmp_path / "kar.png").exists() and not (tmp_path / "noretrain.png").exists()
    run = run_contents(log_summary_to_wandb(tmp_path, summarize(rows), group="g", config={}))
    assert {key.split("/")[1] for key in run["summary"] if key.startswith("figures/")} == {"roar"}


def test_the_summary_run_shows_the_figures_of_a_grid_under_another_default_fill(tmp_path, monkeypatch):
    """protocol.fill noisy_linear: the report names its figure roar.png; the dashboard looked for
    roar@noisy_linear.png and showed no figure at all. Its key is its curve's, roar@noisy_linear."""
    from roar.benchmark.report import log_summary_to_wandb, summarize, write_report

    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = _roar_rows("noisy_linear")
    write_report(tmp_path, rows, config={"protocol": {"fill": "noisy_linear"}}, print_table=False, resamples=50)
    run_dir = log_summary_to_wandb(tmp_path, summarize(rows, default_fill="noisy_linear"), group="g", config={}, default_fill="noisy_linear")
    run = run_contents(run_dir)
    # keyed as its curve (curves/roar@noisy_linear, auc/roar@noisy_linear/...), not as the paper's fill's
    assert {key.split("/")[1] for key in run["summary"] if key.startswith("figures/")} == {"roar@noisy_linear"}
    assert (run_dir / "files" / run["summary"]["figures/roar@noisy_linear/path"]).read_bytes() == (tmp_path / "roar.png").read_bytes()
    assert {key.split("/")[1] for key in run["summary"] if key.startswith("auc/")} == {"roar@noisy_linear"}
