"""A stacked member logs the validation and test metrics its run alone logs (benchmark.stack).

Hooker et al. (2019) retrain every ROAR/KAR cell from scratch; a stack changes how fast, not what,
so each member's metrics.csv must hold the ``val/loss``, ``val/acc`` (every validation) and
``test/loss``, ``test/acc`` that Lightning logs for the same cell run alone, at the same steps.
"""

import csv
from pathlib import Path

import pytest

from roar.benchmark.cell import run_directory
from roar.benchmark.runner import execute_run
from roar.benchmark.stacked_runner import execute_stack
from test_stacked_training import config, spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: small models, one thread each

EVALUATED = ("val/loss", "val/acc", "test/loss", "test/acc")


def evaluation_log(folder: Path) -> dict[tuple[int, int, str], float]:
    """``(step, epoch, metric) -> value`` of every validation and test metric in a run folder's metrics.csv."""
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(int(r["step"]), int(r["epoch"]), key): float(r[key]) for r in rows for key in EVALUATED if r.get(key)}


@pytest.mark.parametrize(
    "model", [{"label_smoothing": 0.1}, {"loss": "least_squares"}], ids=["cross_entropy-smoothed", "least_squares"]
)  # fmt: skip
def test_stacked_members_log_the_validation_and_test_metrics_of_their_runs_alone(tmp_path, model):
    # label smoothing trains, but a run alone logs val/test loss without it: the stack must too
    cfg = config(logger="csv", model={"arch": "small_cnn", "lr": 0.05, "warmup_epochs": 0, **model}, trainer={"max_epochs": 2, "accelerator": "cpu"})
    specs = [spec("unmasked", "reference", 0.0, 0), spec("random", "roar", 0.5, 1)]
    base = tmp_path / "base.ckpt"  # random ranks need no base model
    for s in specs:
        execute_run(s, cfg, tmp_path / "separate", base, progress=False)
    execute_stack(specs, cfg, tmp_path / "stacked", base, vectorize=False)  # CPU's loop: each member's own kernels

    logs = []
    for s in specs:
        alone, together = evaluation_log(run_directory(tmp_path / "separate", s)), evaluation_log(run_directory(tmp_path / "stacked", s))
        # every validation epoch (check_val_every_n_epoch 1: both) and the test, at the steps Lightning logged them
        assert {k[2] for k in alone} == set(EVALUATED) and sum(k[2] == "val/loss" for k in alone) == 2, sorted(alone)
        assert together.keys() == alone.keys(), (sorted(together), sorted(alone))
        for key, value in alone.items():
            assert together[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        logs.append(alone)
    # the members' numbers differ (their seeds and masks): equality above is not one run's numbers twice
    test_losses = [[v for k, v in log.items() if k[2] == "test/loss"] for log in logs]
    assert test_losses[0] != test_losses[1], test_losses
