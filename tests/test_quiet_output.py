"""What a grid prints (issue 12, "quiet by default"): one line per run, no third-party banners."""

import os
import re
import subprocess
import sys
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
)
RUN_LINE = re.compile(r"^\[(\d+)/(\d+)\] (roar|kar|noretrain|reference) (\w+) t=[\d.]+ seed \d+: test acc [01]\.\d{3} \([\d.]+ s\)")


def _benchmark(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "roar", "benchmark", "--config", DEMO, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "1",
        "--benchmark.methods", "[random]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1",
        "--benchmark.logger", "wandb", "--benchmark.base.min_accuracy", "0", "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_grid_prints_one_line_per_run_and_no_banners(tmp_path):
    done = _benchmark(tmp_path / "grid")
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    for banner in BANNERS:
        assert banner not in text, f"{banner!r} printed:\n{text[-3000:]}"
    run_lines = [m for m in map(RUN_LINE.match, text.splitlines()) if m]
    # 1 reference + (unmasked + random) noretrain + random roar and kar
    assert [(int(m.group(1)), int(m.group(2))) for m in run_lines] == [(i, 5) for i in range(1, 6)]
    assert {m.group(3) for m in run_lines} == {"reference", "noretrain", "roar", "kar"}
    # the rest: the base model, the ranks, the report's tables; far from a line per epoch or batch
    assert len(text.splitlines()) < 5 + 40, text


@pytest.mark.slow
def test_verbose_brings_the_runs_own_output_back(tmp_path):
    done = _benchmark(tmp_path / "grid", "--verbose", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU available" in done.stdout + done.stderr
