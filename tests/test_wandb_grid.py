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
    service = os.environ.pop("WANDB_SERVICE", None)  # a service of an earlier test is not this grid's
    out = tmp_path_factory.mktemp("wandb_grid") / "out"
    try:
        assert roar_main(["benchmark", *GRID, "--out", str(out)]) == 0
        first = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
        assert roar_main(["benchmark", *GRID, "--out", str(out)]) == 0  # the resume retries the failed run
    finally:
        if service is not None:
            os.environ["WANDB_SERVICE"] = service
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
    # twice failed (the grid and its resume), never shown as finished; every other run exited cleanly
    assert exits.pop("roar-random-t0.5-s1") == {1}
    assert set().union(*exits.values()) == {0}, exits


@pytest.mark.slow
def test_a_resumed_grid_keeps_one_summary_run_the_latest(grid):
    out, first, runs = grid
    summaries = [name for name, run in runs.items() if run["job_type"] == "summary"]
    # one summary per folder: a second, stale one in the same group would chart the grid twice
    assert len(summaries) == 1 and summaries[0] not in first, (summaries, first)
    assert len([name for name, run in runs.items() if run["job_type"] == "base"]) == 1
