"""A grid's W&B runs (issue 12, item 1): one offline run per retrain, holding its config and result,
through one W&B service that the grid starts and tears down, with lean per-run settings."""

import os
from pathlib import Path

import pytest

from roar.__main__ import main as roar_main
from roar.benchmark.results import ResultsStore

pytest.importorskip("wandb")
from wandb_records import run_contents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")
TINY = [
    "--config", DEMO, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "1", "--benchmark.base.min_accuracy", "0",
    "--benchmark.methods", "[random]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "2", "--benchmark.modes", "[roar]",
    "--benchmark.noretrain", "false", "--benchmark.logger", "wandb", "--progress", "false",
]  # fmt: skip


@pytest.mark.parametrize("stack", [2, pytest.param(1, marks=pytest.mark.slow)], ids=["stacked", "one-by-one"])
def test_each_retrain_is_one_lean_offline_run_with_its_config_and_accuracy(tmp_path, monkeypatch, capsys, stack):
    # A service of an earlier test is not this grid's, and the grid's teardown ends this process's
    # W&B service: restoring the variable would point later tests at a dead one, so it stays unset.
    os.environ.pop("WANDB_SERVICE", None)
    out = tmp_path / "grid"
    # stacked: both seeds' runs are open at once, and each must still be its own W&B run
    assert roar_main(["benchmark", *TINY, "--benchmark.stack", str(stack), "--out", str(out)]) == 0
    assert "WANDB_SERVICE" not in os.environ, "the grid's W&B service was left running"
    # the runs print nothing: one closing line says where they are and how to upload them (README)
    assert f"W&B runs saved offline in {out / 'wandb'}; upload them with: wandb sync {out / 'wandb'}/offline-run-*" in capsys.readouterr().out

    runs = [run_contents(d) for d in sorted((out / "wandb").glob("offline-run-*"))]
    by_job = {}
    for run in runs:
        by_job.setdefault(run["job_type"], []).append(run)
    assert {job: len(runs) for job, runs in by_job.items()} == {"base": 1, "reference": 2, "roar": 2, "summary": 1}
    assert {run["group"] for run in runs} == {"digits_demo"}
    assert all(run["exit"] == 0 for run in runs), "every run finished cleanly (what wandb sync uploads)"

    rows = ResultsStore(out / "results.db").rows()
    assert len(rows) == 4
    # the grid's settings under one key in every run, base and summary included: one column per setting in W&B
    assert all(run["config"]["benchmark"] == rows[0]["config"]["benchmark"] for run in runs), [sorted(run["config"]) for run in runs]
    for row in rows:
        [run] = [r for r in by_job[row["mode"]] if r["name"] == f"{row['mode']}-{row['method']}-t{row['threshold']:g}-s{row['seed']}"]
        assert run["summary"]["test/acc"] == pytest.approx(row["test_acc"], abs=1e-6)
        assert run["config"]["benchmark"] == row["config"]["benchmark"]
        assert run["config"]["method"] == row["method"] and run["config"]["threshold"] == row["threshold"]
        # the retrain's seed, not the datamodule's data seed (0) that Lightning's hparams logging wrote over it
        assert run["config"]["seed"] == row["seed"] and run["config"]["mode"] == row["mode"], run["config"]
        assert any(key.startswith("train/loss") for step in run["history"] for key in step), run["history"]
        # one x axis for every run: optimiser steps (the base model's too: the same 1 epoch of the same split),
        # a stacked run's epoch losses at each epoch's last step, as Lightning logs its epoch-end values
        steps = by_job["base"][0]["summary"]["trainer/global_step"]
        assert run["summary"]["trainer/global_step"] == steps > 1 and run["summary"]["epoch"] == row["epochs"] == 1
        assert {h["trainer/global_step"] for h in run["history"] if "train/loss" in h} <= set(range(steps)), run["history"]

    # lean retrain runs: no per-run package list; the summary run records the environment once
    folders = {run_dir: run_contents(run_dir)["job_type"] for run_dir in (out / "wandb").glob("offline-run-*")}
    with_requirements = {job for run_dir, job in folders.items() if (run_dir / "files" / "requirements.txt").is_file()}
    assert with_requirements == {"summary"}
