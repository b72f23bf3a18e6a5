"""The ``ray`` launcher: one Ray task per run of the grid, recorded by the driver.

Hooker et al. (NeurIPS 2019) retrain a model per (method, threshold, seed, mode): hundreds of
trainings, more than one machine does in a day at ResNet-50 scale. Each run is a pure function of
the config, its spec and paths on disk (:mod:`roar.benchmark.launchers` explains the contract), so a
Ray task needs nothing but dicts and paths: the output folder must be on storage every node mounts
at the same path (it holds the base checkpoint and the ranks). A task returns its outcome and the
driver records it, so only the driver writes ``results.db``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roar.benchmark.cell import attempt_run, record_outcome, run_config
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import LaunchOptions, OnFinished, _quiet_worker, _worker_config, require_ray, wants_gpu
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore

log = logging.getLogger(__name__)


def _ray_task(spec_dict: dict[str, Any], cfg_dict: dict[str, Any], out: str, base_ckpt: str, threads: int) -> dict[str, Any]:
    """One run as a Ray task: rebuilt from the config and paths on shared storage; returns the outcome."""
    _quiet_worker(threads)
    if not Path(base_ckpt).is_file():
        import socket

        raise FileNotFoundError(
            f"{base_ckpt} is not visible on Ray node {socket.gethostname()}: the output folder must be on storage "
            "every node mounts at the same path (NFS, a cluster file system)"
        )
    spec, cfg, out_path = RunSpec.from_dict(spec_dict), _worker_config(cfg_dict), Path(out)
    return attempt_run(spec, cfg, out_path, Path(base_ckpt), progress=False)


def _connect_ray(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it, so the driver shuts it down after."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"address": address}
    if address == "local":
        kwargs["include_dashboard"] = False  # a throwaway single-machine instance
    ray.init(**kwargs)
    return True


def ray_resources(cfg: BenchmarkConfig, options: LaunchOptions, cluster: dict[str, float]) -> dict[str, float]:
    """``num_cpus``/``num_gpus`` of one run's task, checked against the cluster's totals."""
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
    """Run ``todo`` as Ray tasks, one per run, and record each outcome in the driver's ``results.db``.

    Tasks get the config and the spec as dicts and absolute paths: ``out`` must be on storage
    every Ray node mounts at the same path. Ray reruns a task whose worker or node died up to
    ``options.worker_retries`` times (``max_retries``); exceptions inside a run are retried by the
    task itself (``cfg.retries``) and come back as a failed outcome.
    """
    ray = require_ray()
    started = _connect_ray(ray, options.ray_address)
    try:
        resources = ray_resources(cfg, options, ray.cluster_resources())
        task = ray.remote(_ray_task).options(**resources, max_retries=options.worker_retries, retry_exceptions=False)
        threads = max(1, int(resources["num_cpus"]))
        cfg_dict, out_s, ckpt_s = cfg.to_dict(), str(Path(out).resolve()), str(Path(base_ckpt).resolve())
        pending = {task.remote(spec.to_dict(), cfg_dict, out_s, ckpt_s, threads): spec for spec in todo}
        log.info("submitted %d runs to Ray (%s per task)", len(pending), resources)
        finished = on_finished or (lambda spec, outcome: None)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    spec = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as err:  # the task's worker died more often than max_retries allows
                        text = f"the Ray task of {spec.run_id} failed: {err}"
                        log.warning(text)
                        results.record(spec, status="failed", error=text, config=run_config(cfg, spec))
                        finished(spec, {"status": "failed", "error": text})
                        continue
                    record_outcome(results, spec, cfg, outcome, provenance)
                    finished(spec, outcome)
        except BaseException:
            for ref in pending:  # Ctrl-C: do not leave the cluster busy with runs nobody records
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
