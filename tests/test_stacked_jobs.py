"""benchmark.stack with --workers N or --launcher ray: each worker or Ray task trains whole stacks
(the seeds of one cell), and every member is recorded as the run a sequential, unstacked grid
records (Hooker et al. 2019 retrain each cell from scratch; a stack changes how fast, not what)."""

import os
from pathlib import Path

import pytest

from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import LaunchOptions
from roar.benchmark.plan import RunSpec
from roar.benchmark.runner import run_benchmark
from roar.benchmark.stacked_jobs import plan_jobs
from roar.models.checkpoint import load_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; the workers get one thread each below; the sequential grid too, so both sum in the same order


def config(**overrides) -> BenchmarkConfig:
    fields = dict(
        name="stacked-jobs", data={"source": "digits", "image_size": 8, "batch_size": 32, "val_fraction": 0.5, "seed": 0},
        model={"arch": "small_cnn", "lr": 0.05, "warmup_epochs": 0}, trainer={"max_epochs": 1, "accelerator": "cpu"},
        base={"max_epochs": 1, "seed": 0, "min_accuracy": 0.0}, logger="none", methods=["random"], thresholds=[0.5],
        seeds=2, modes=["roar"], noretrain=False,
    )  # fmt: skip
    fields.update(overrides)
    return BenchmarkConfig.from_dict(fields)


def spec(method: str, mode: str, seed: int) -> RunSpec:
    return RunSpec("digits", "small_cnn", method, mode, 0.0 if method == "unmasked" else 0.5, seed)


def test_jobs_are_stacks_of_one_cells_seeds_then_single_runs():
    todo = [spec("random", "roar", 0), spec("unmasked", "noretrain", 0), spec("random", "roar", 1), spec("random", "roar", 2)]
    # a lone seed left over gains nothing from a stack: it runs alone, in the grid's order
    assert plan_jobs(todo, config(stack=2, seeds=3)) == [[todo[0], todo[2]], [todo[1]], [todo[3]]]
    assert plan_jobs(todo, config(stack=1, seeds=3)) == [[s] for s in todo]
    # auto on trainer settings a stack does not reproduce: every run alone, as before
    clipped = config(stack="auto", seeds=3, trainer={"max_epochs": 1, "accelerator": "cpu", "gradient_clip_val": 1.0})
    assert plan_jobs(todo, clipped) == [[s] for s in todo]


def assert_records_what_a_sequential_grid_records(parallel, sequential) -> None:
    """Every run id of the stacked grid has the sequential, unstacked grid's row: status, fingerprint, accuracy."""
    one = {r["run_id"]: r for r in sequential.rows()}
    stacked = {r["run_id"]: r for r in parallel.rows()}
    assert one.keys() == stacked.keys() and len(one) == 4  # 2 references + 2 roar runs
    for run_id, row in one.items():
        together = stacked[run_id]
        assert row["status"] == together["status"] == "done"
        assert together["fingerprint"] == row["fingerprint"]
        # on CPU a stack runs each member's own kernels: the same images right (Lightning's metric is float32,
        # the stack's count double, so equal to float32's precision; one image of 359 is 0.0028)
        assert together["test_acc"] == pytest.approx(row["test_acc"], abs=1e-6), run_id
        assert together["config"]["benchmark"]["stack"] == 2
        assert load_checkpoint(together["checkpoint"]).get("stacked") == 2, f"{run_id} was not trained in a stack"
    assert len({round(r["test_acc"], 6) for r in one.values()}) > 1  # four different runs, not one copied


@pytest.mark.slow
def test_stacks_on_two_workers_record_what_a_sequential_grid_records(tmp_path):
    sequential = run_benchmark(config(stack=1), tmp_path / "one-by-one", progress=False, report=False)
    parallel = run_benchmark(config(stack=2), tmp_path / "stacked", progress=False, report=False, launch=LaunchOptions(workers=2, threads=1))
    assert_records_what_a_sequential_grid_records(parallel, sequential)


@pytest.fixture
def local_ray(monkeypatch):
    """A small Ray instance on this machine (2 CPUs, no dashboard), shut down after the test."""
    ray = pytest.importorskip("ray")
    # Ray's workers inherit the environment, not pytest's sys.path: they import tests/plugins.py through it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_stacks_as_ray_tasks_record_what_a_sequential_grid_records(tmp_path, local_ray):
    sequential = run_benchmark(config(stack=1), tmp_path / "one-by-one", progress=False, report=False)
    # one Ray task per stack (1 CPU, so 1 torch thread each): the references' seeds, then random's
    parallel = run_benchmark(config(stack=2), tmp_path / "stacked", progress=False, report=False, launch=LaunchOptions(launcher="ray"))
    assert_records_what_a_sequential_grid_records(parallel, sequential)


@pytest.mark.slow
def test_a_stack_whose_ray_task_dies_is_run_one_per_task_or_recorded_failed_per_run(tmp_path, local_ray):
    def dying(out: str):  # the first Ray task to build its network dies (a killed worker); the driver builds it too
        model = {"arch": "plugins.DiesOutsideOnce", "arch_args": {"driver_pid": os.getpid(), "marker_dir": str(tmp_path / out)}, "lr": 0.05, "warmup_epochs": 0}
        (tmp_path / out).mkdir()
        return config(stack=2, model=model)

    def stacked(row) -> bool:
        return load_checkpoint(row["checkpoint"]).get("stacked") == 2

    # no retries: the dead stack's two runs are recorded failed, each under its own run id, the other stack done
    rows = run_benchmark(dying("no-retry"), tmp_path / "no-retry", progress=False, report=False, launch=LaunchOptions(launcher="ray", worker_retries=0)).rows()
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 4 and len(failed) == 2 and len({(r["mode"], r["method"]) for r in failed}) == 1  # one cell's seeds
    for row in failed:
        assert f"the Ray task of the stack of 2 runs holding {row['run_id']} failed" in row["error"]
    assert all(stacked(r) for r in rows if r["status"] == "done")

    # one retry: the dead stack's runs go one per task and are done, alone; the other stack's, stacked
    rows = run_benchmark(dying("retry"), tmp_path / "retry", progress=False, report=False, launch=LaunchOptions(launcher="ray", worker_retries=1)).rows()
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    alone = [r for r in rows if not stacked(r)]
    assert len(alone) == 2 and len({(r["mode"], r["method"]) for r in alone}) == 1


@pytest.mark.slow
def test_starting_a_local_ray_prints_nothing(capfd):
    ray = pytest.importorskip("ray")
    from roar.benchmark.ray_launcher import _connect_ray

    try:
        assert _connect_ray(ray, "local") is True
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    printed = capfd.readouterr()
    assert "Ray" not in printed.out + printed.err, printed
