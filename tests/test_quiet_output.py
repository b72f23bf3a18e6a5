"""What a grid prints (issue 12, "quiet by default"): one line per run, no third-party banners."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")

BANNERS = (
    "GPU available",
    "TPU available",
    "HPU available",
    "litlogger",
    "`weights_only` was not set",
    "LeafSpec",
    "Loading `train_dataloader`",
    "anonymous setting",
    "| Name",  # a model summary
    "Epoch 0",  # a run's own progress bar
    "exists and is not empty",  # Lightning's CSVLogger, in a run's folder left by an interrupted attempt
)
RUN_LINE = re.compile(r"^\[(\d+)/(\d+)\] (roar|kar|reference) (\w+) t=[\d.]+ seed \d+: test acc [01]\.\d{3} \([\d.]+ s\)")
EVALUATIONS_LINE = re.compile(r"^\[(\d+)/(\d+)\] no retraining: (\d+) evaluations of the base model on masked test data")


def _benchmark(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "roar", "benchmark", "--config", DEMO, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "1",
        "--benchmark.methods", "[random]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1",
        "--benchmark.logger", "wandb", "--benchmark.base.min_accuracy", "0", "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # tests/user_code.py: a user's package
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_grid_prints_one_line_per_run_and_no_banners(tmp_path):
    for stale in ("base", "roar/random/t0.500-s0"):  # the logs of an attempt interrupted by Ctrl-C
        (tmp_path / "grid" / "runs" / stale).mkdir(parents=True)
        (tmp_path / "grid" / "runs" / stale / "metrics.csv").write_text("epoch,train/loss\n0,2.3\n")
    done = _benchmark(tmp_path / "grid")
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    for banner in BANNERS:
        assert banner not in text, f"{banner!r} printed:\n{text[-3000:]}"
    run_lines = [m for m in map(RUN_LINE.match, text.splitlines()) if m]
    evaluation_lines = [m for m in map(EVALUATIONS_LINE.match, text.splitlines()) if m]
    # 6 runs: 3 retrains (reference, random roar and kar), one line each, and 3 no-retrain
    # evaluations (unmasked; random in ROAR and KAR order), one line together
    assert {m.group(3) for m in run_lines} == {"reference", "roar", "kar"} and len(run_lines) == 3
    [evaluations] = evaluation_lines
    assert evaluations.group(3) == "3"
    counts = sorted(int(m.group(1)) for m in [*run_lines, evaluations])
    assert counts[-1] == 6 and {int(m.group(2)) for m in [*run_lines, evaluations]} == {6}
    # the rest: the base model, the ranks, the report's table; far from a line per epoch or batch
    assert len(text.splitlines()) < 4 + 30, text


@pytest.mark.slow
def test_verbose_brings_the_runs_own_output_back(tmp_path):
    done = _benchmark(tmp_path / "grid", "--verbose", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU available" in done.stdout + done.stderr


def test_a_stacks_lines_share_one_eta(capsys):
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.progress import GridProgress

    specs = [RunSpec(dataset="digits", model="small_cnn", method="gradient", mode="roar", threshold=0.5, seed=seed) for seed in (0, 1)]
    outcome = {"status": "done", "test_acc": 0.5, "seconds": 0.2}
    with GridProgress(total=100, done=0) as bar:
        time.sleep(0.2)  # the stack's training: both members end now
        bar.finished_together(specs, [outcome, outcome])
    etas = [int(m) * 60 + int(s) for m, s in re.findall(r"eta (\d+):(\d\d)", capsys.readouterr().out)]
    # Both members count as done on both lines: about 0.2 s / 2 runs x 98 left = 10 s each. Counted
    # one at a time, the first line would say 0.2 s / 1 run x 99 left = 20 s, the second 10 s.
    assert len(etas) == 2 and abs(etas[0] - etas[1]) <= 1, etas


@pytest.mark.slow  # 16 s: a failing grid in a subprocess; test_a_grid_with_failed_runs_exits_non_zero_listing_them covers failures in-process
def test_runs_failing_alike_print_their_traceback_once(tmp_path):
    """A bug every retrain meets (here a user's callback): one traceback, one line per further run; all in report.md."""
    out = tmp_path / "grid"
    done = _benchmark(out, "--trainer.callbacks+=user_code.FailingRetrains", "--benchmark.thresholds", "[0.3, 0.6]")
    text = done.stdout + done.stderr
    assert done.returncode == 1, text[-3000:]  # failed runs, named
    assert text.count("Traceback (most recent call last)") == 1, text
    further = [line for line in text.splitlines() if "RuntimeError: the user's callback broke (traceback as for " in line]
    assert len(further) == 3, text  # roar and kar at two thresholds: 4 failed runs, the first in full
    assert (out / "report.md").read_text().count("RuntimeError: the user's callback broke") >= 2 * 4  # each with its traceback


def test_line_numbers_never_skip_an_evaluation_that_has_no_line_yet(capsys):
    """With --workers or stacks a no-retrain evaluation can finish between retrains; its number waits
    for the one line that sums up the evaluations (a grid printed [60/93], [62/93]: run 61 seemed lost)."""
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.progress import GridProgress

    def spec(mode: str, seed: int) -> RunSpec:
        return RunSpec(dataset="digits", model="small_cnn", method="gradient", mode=mode, threshold=0.5, seed=seed)

    evaluations, retrains = [spec("noretrain", 0), spec("noretrain_kar", 0)], [spec("roar", 0), spec("roar", 1)]
    outcome = {"status": "done", "test_acc": 0.5, "seconds": 0.1}
    with GridProgress(total=4, done=0, pending=[*evaluations, *retrains]) as bar:
        for finished in [evaluations[0], *retrains, evaluations[1]]:
            bar.finished(finished, outcome)
    numbers = [int(n) for n in re.findall(r"^\[(\d+)/4\]", capsys.readouterr().out, flags=re.M)]
    assert numbers == [1, 2, 4]


def test_the_eta_counts_retrains_not_the_quick_evaluations(capsys):
    """A no-retrain evaluation takes a fraction of a second: 20 of them left are not 20 retrains left."""
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.progress import GridProgress

    def spec(mode: str, threshold: float) -> RunSpec:
        return RunSpec(dataset="digits", model="small_cnn", method="gradient", mode=mode, threshold=threshold, seed=0)

    retrains = [spec("roar", t) for t in (0.1, 0.2, 0.3)]
    evaluations = [spec("noretrain", t / 100) for t in range(1, 21)]
    outcome = {"status": "done", "test_acc": 0.5, "seconds": 1.0}
    with GridProgress(total=23, done=0, pending=[*retrains, *evaluations]) as bar:
        time.sleep(1.0)  # the first retrain
        bar.finished(retrains[0], outcome)
    (eta,) = [int(m) * 60 + int(s) for m, s in re.findall(r"eta (\d+):(\d\d)", capsys.readouterr().out)]
    # about 1 s per retrain x 2 retrains left; counted per run it was 1 s x 22 runs left
    assert 1 <= eta < 11, eta


def test_the_eta_leaves_out_the_time_before_the_first_run_started(capsys):
    """Starting workers (imports) is paid once: it is not the first run's duration."""
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.progress import GridProgress

    retrains = [RunSpec(dataset="digits", model="small_cnn", method="gradient", mode="roar", threshold=0.5, seed=seed) for seed in range(5)]
    with GridProgress(total=5, done=0, pending=retrains) as bar:
        time.sleep(1.5)  # workers starting
        bar.finished(retrains[0], {"status": "done", "test_acc": 0.5, "seconds": 0.1})
    (eta,) = [int(m) * 60 + int(s) for m, s in re.findall(r"eta (\d+):(\d\d)", capsys.readouterr().out)]
    # 0.1 s per run x 4 left; from the grid's start it was 1.6 s x 4 = 6 s
    assert eta <= 2, eta


def test_no_eta_until_more_runs_are_in_than_ran_at_once(capsys):
    """Two workers start two runs together: when the first is in, the rate is unknown (one run over its
    duration made make run's first line say 2:48 for 1.5 min; the two counted as done, 0:45)."""
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.progress import GridProgress

    retrains = [RunSpec(dataset="digits", model="small_cnn", method="gradient", mode="roar", threshold=0.5, seed=seed) for seed in range(100)]
    outcome = {"status": "done", "test_acc": 0.5, "seconds": 0.1}
    alone, together = GridProgress(total=100, done=0, pending=retrains), GridProgress(total=100, done=0, pending=retrains, parallel=2)
    alone.finished(retrains[0], outcome)
    assert "eta" in capsys.readouterr().out  # one at a time: the first run gives the rate
    for spec in retrains[:2]:
        together.finished(spec, outcome)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not any("eta" in line for line in lines), lines
    together.finished(retrains[2], outcome)
    assert "eta" in capsys.readouterr().out


def test_the_seed_banner_is_dropped_on_every_ddp_process(caplog, monkeypatch):
    """``train.py`` under DDP: process 1 printed "[rank: 1] Seed set to 0", process 0 nothing."""
    import logging

    from lightning.fabric.utilities.seed import seed_everything

    from roar.quiet import drop_banners

    drop_banners()
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)  # as DDP's processes see themselves
        with caplog.at_level(logging.INFO, logger="lightning.fabric.utilities.seed"):
            seed_everything(3)
    assert "Seed set to" not in caplog.text, caplog.text
    with caplog.at_level(logging.INFO, logger="lightning.fabric.utilities.seed"):
        logging.getLogger("lightning.fabric.utilities.seed").info("[rank: 1] a line that says something")
    assert "a line that says something" in caplog.text  # only the banner is dropped
