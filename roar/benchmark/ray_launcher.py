"""The ``ray`` launcher: one Ray task per job of the grid (a run, or a stack of runs), recorded by the driver.

Hooker et al. (NeurIPS 2019) retrain a model per (method, threshold, seed, mode): hundreds of
trainings, more than one machine does in a day at ResNet-50 scale. Each run is a pure function of
the config, its spec and paths on disk (:mod:`roar.benchmark.launchers` explains the contract), so a
Ray task needs nothing but dicts and paths: the output folder must be on storage every node mounts
at the same path (it holds the base checkpoint and the ranks). With ``benchmark.stack`` a task
trains the seeds of one cell as one stacked model on its one device, the jobs the local workers
get (:func:`~roar.benchmark.stacked_jobs.plan_jobs`, :func:`~roar.benchmark.stacked_jobs.train_job`).
A task returns each member's outcome and the driver records them, one row per run, so only the
driver writes ``results.db``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roar.benchmark.cell import record_outcome, run_config
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import LaunchOptions, OnFinished, _quiet_worker, _worker_config, require_ray, wants_gpu
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore
from roar.benchmark.stacked_jobs import plan_jobs, train_job

log = logging.getLogger(__name__)


def _ray_task(spec_dicts: list[dict[str, Any]], cfg_dict: dict[str, Any], out: str, base_ckpt: str, threads: int) -> list[dict[str, Any]]:
    """One job as a Ray task (a run, or a stack of runs on one device): rebuilt from the config and
    paths on shared storage; returns each run's outcome, in order, for the driver to record."""
    _quiet_worker(threads)
    if not Path(base_ckpt).is_file():
        import socket

        raise FileNotFoundError(
            f"{base_ckpt} is not visible on Ray node {socket.gethostname()}: the output folder must be on storage "
            "every node mounts at the same path (NFS, a cluster file system)"
        )
    specs, cfg = [RunSpec.from_dict(d) for d in spec_dicts], _worker_config(cfg_dict)
    return train_job(specs, cfg, Path(out), Path(base_ckpt))


RAY_NOTICES = ("Token authentication is enabled for this Ray cluster",)
"""Ray's warning-level notices that say nothing about the user's grid (said at every ``ray.init``)."""


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_NOTICES)


def _connect_ray(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray, quietly; True when this call started it, so the driver shuts it down after.

    Ray's info lines ("Started a local Ray instance", "Connecting to existing Ray cluster") and
    :data:`RAY_NOTICES` are left out: the grid prints one line per run and nothing else.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address == "local":
        kwargs["include_dashboard"] = False  # a throwaway single-machine instance
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    drop = _DropNotices()
    notices.addFilter(drop)
    try:
        ray.init(**kwargs)
    finally:
        notices.removeFilter(drop)
    return True


@contextmanager
def ray_cluster(cfg: BenchmarkConfig, options: LaunchOptions) -> Iterator[None]:
    """Join (or start) Ray and check that it holds a task's resources, for the whole grid.

    Entered before the base model trains: a cluster that is not there (``--ray-address auto``
    with no ``ray start`` on this node) or lacks the GPUs a task asks for was found only when the
    first task was submitted, after the base model and every method's ranks, hours on ImageNet.
    :func:`run_ray` then finds Ray connected; Ray is shut down on leaving if this call started it.
    """
    ray = require_ray()
    try:
        started = _connect_ray(ray, options.ray_address)
    except ConnectionError as err:
        raise ValueError(
            f"--ray-address {options.ray_address}: no Ray cluster to join ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "start one with `ray start --head` (docs/scale.md), pass the head's <host>:6379, "
            "or --ray-address local for a throwaway instance on this machine"
        ) from None
    try:
        ray_resources(cfg, options, ray.cluster_resources())
        yield
    finally:
        if started:
            ray.shutdown()


def ray_resources(cfg: BenchmarkConfig, options: LaunchOptions, cluster: dict[str, float]) -> dict[str, float]:
    """``num_cpus``/``num_gpus`` of one task, checked against the cluster's totals; a stack task
    asks for the same as a run's, since a stack trains on one device."""
    gpus = options.ray_gpus_per_task
    if gpus is None:
        gpus = 1.0 if wants_gpu(cfg, cluster.get("GPU", 0) > 0) else 0.0
    if gpus > cluster.get("GPU", 0):
        raise ValueError(
            f"each run asks for {gpus:g} GPU(s) but the Ray cluster has {cluster.get('GPU', 0):g} GPUs; "
            "add GPU nodes, or set trainer.accelerator: cpu (or --ray_gpus_per_task 0)"
        )
    if options.ray_cpus_per_task > cluster.get("CPU", 0):
        raise ValueError(f"ray_cpus_per_task={options.ray_cpus_per_task:g} but the Ray cluster has {cluster.get('CPU', 0):g} CPUs")
    return {"num_cpus": float(options.ray_cpus_per_task), "num_gpus": float(gpus)}


def run_ray(
    todo: Sequence[RunSpec],
    cfg: BenchmarkConfig,
    out: Path,
    base_ckpt: Path,
    results: ResultsStore,
    *,
    options: LaunchOptions,
    on_finished: OnFinished | None = None,
    provenance: Any = None,
) -> None:
    """Run ``todo`` as Ray tasks, one per job, and record each run's outcome in the driver's ``results.db``.

    A job is a run, or with ``benchmark.stack`` the seeds of one cell trained as one stack
    (:func:`~roar.benchmark.stacked_jobs.plan_jobs`, as for local workers). Tasks get the config and
    the specs as dicts and absolute paths: ``out`` must be on storage every Ray node mounts at the
    same path. Ray reruns a run's task whose worker or node died up to ``options.worker_retries``
    times (``max_retries``); a stack's task that died is not rerun as a stack: its runs go one per
    task, with the retries left (a stack that fails inside its task is run one by one there).
    Exceptions inside a run are retried by the task itself (``cfg.retries``) and come back as a
    failed outcome.
    """
    ray = require_ray()
    started = _connect_ray(ray, options.ray_address)
    try:
        resources = ray_resources(cfg, options, ray.cluster_resources())
        task = ray.remote(_ray_task)
        threads = max(1, int(resources["num_cpus"]))
        cfg_dict, out_s, ckpt_s = cfg.to_dict(), str(Path(out).resolve()), str(Path(base_ckpt).resolve())
        pending: dict[Any, list[RunSpec]] = {}

        def submit(job: list[RunSpec], retries: int) -> None:
            options_ = {**resources, "max_retries": retries, "retry_exceptions": False}
            pending[task.options(**options_).remote([s.to_dict() for s in job], cfg_dict, out_s, ckpt_s, threads)] = job

        jobs = plan_jobs(list(todo), cfg)
        for job in jobs:  # a stack's death is handled below, not by Ray rerunning the whole stack
            submit(job, 0 if len(job) > 1 else options.worker_retries)
        log.info("submitted %d runs to Ray as %d tasks (%s per task)", len(todo), len(jobs), resources)
        finished = on_finished or (lambda spec, outcome: None)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except Exception as err:  # the task raised, or its worker died more often than max_retries allows
                        died = not isinstance(err, ray.exceptions.RayTaskError)
                        if died and len(job) > 1 and options.worker_retries > 0:
                            log.warning("the Ray task of a stack of %d runs (%s...) died: %s; running them one per task", len(job), job[0].run_id, err)
                            for spec in job:
                                submit([spec], options.worker_retries - 1)
                            continue
                        for spec in job:
                            text = _failure(spec, job, err)
                            log.warning(text)
                            results.record(spec, status="failed", error=text, config=run_config(cfg, spec))
                            finished(spec, {"status": "failed", "error": text})
                        continue
                    for spec, outcome in zip(job, outcomes, strict=True):
                        record_outcome(results, spec, cfg, outcome, provenance)
                        finished(spec, outcome)
        except BaseException:
            for ref in pending:  # Ctrl-C: do not leave the cluster busy with runs nobody records
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def _failure(spec: RunSpec, job: list[RunSpec], err: Exception) -> str:
    """The error recorded for ``spec``, whose Ray task (its own, or the stack ``job``'s) gave no result."""
    task = f"the Ray task of {spec.run_id}" if len(job) == 1 else f"the Ray task of the stack of {len(job)} runs holding {spec.run_id}"
    return f"{task} failed: {err}"
