"""Run the benchmark grid in parallel: worker processes on one machine, or Ray tasks on a cluster.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019)
retrain a ResNet-50 hundreds of times (method x threshold x seed x mode): one machine, one run at a
time, is too slow. Every run is a pure function of the benchmark config, its :class:`RunSpec` and
paths on disk (:func:`roar.benchmark.cell.execute_run`), so the grid parallelises without
shipping models or tensors: a worker gets the config as a dict, the spec as a dict and the paths,
rebuilds the data module from the config, reads the ranks from the attribution store and trains.
The driver (``run_benchmark``) trains the base model and computes every method's ranks *before*
any worker starts, so workers only ever read the store.

Two launchers:

* ``local`` with ``workers=N``: N worker processes on this machine (``spawn``, never ``fork``
  after torch has started threads), each pinned to one CUDA device through
  ``CUDA_VISIBLE_DEVICES`` (or, on CPU, given ``cores // N`` torch threads). Each worker records
  its own rows in ``results.db``; SQLite's WAL and one transaction per run make the concurrent
  writes safe (:mod:`roar.benchmark.results`).
* ``ray`` (:mod:`roar.benchmark.ray_launcher`): one Ray task per run, or per stack with
  ``benchmark.stack`` (``num_gpus=1`` on GPUs, ``num_cpus`` otherwise). A task returns
  its outcomes and the driver records them, so only the driver writes ``results.db``; the output
  folder must be on storage every node sees (it holds the base checkpoint and the ranks).

A worker process that dies mid-run (out-of-memory kill, segfault, a preempted node) loses only
that run: finished runs are already in ``results.db``. The run is retried up to
``worker_retries`` times in a fresh process (Ray's own ``max_retries`` does this for Ray), then
recorded as failed; running the same command again retries failed runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import traceback
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from roar.benchmark.cell import config_from_dict, run_config
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore
from roar.benchmark.stacked_jobs import plan_jobs, run_job
from roar.registry import Registry

log = logging.getLogger(__name__)

LAUNCHERS: Registry[str] = Registry("launcher")
"""Where a grid's runs go: ``local`` (this machine's processes) or ``ray`` (a Ray cluster)."""
LAUNCHERS.add("local", "worker processes on this machine (--workers N)")
LAUNCHERS.add("ray", "one Ray task per run (or stack) on a Ray cluster")
RAY_INSTALL = "pip install 'roar[ray]'"
GPU_ACCELERATORS = ("gpu", "cuda")

OnFinished = Callable[[RunSpec, dict[str, Any]], None]
"""Called in the driver as each run ends, with its outcome (``status`` ``done`` or ``failed``, then the run's fields or ``error``)."""


@dataclass
class LaunchOptions:
    """How the grid's runs are spread over processes, devices and machines.

    Attributes:
        launcher: ``local`` (this machine) or ``ray`` (a Ray cluster).
        workers: local worker processes, one device each; 1 runs the grid in this process;
            ``auto`` picks them, and the threads of each, from the cores and the model's size
            (:mod:`roar.benchmark.auto_workers`).
        threads: torch threads of each local worker; None: ``cores // workers``.
        worker_retries: how many times a run whose worker *process died* is rerun in a fresh one
            before it is recorded as failed (a Python exception in a run is ``retries`` of the
            benchmark config instead).
        ray_address: the Ray cluster: ``auto`` (the one started by ``ray start`` on this node),
            ``ray://host:10001``, ``local`` (a new single-machine instance), or None (Ray's default:
            ``RAY_ADDRESS``, else a running local cluster, else a new local instance).
        ray_cpus_per_task: CPUs a Ray task reserves (and torch threads it uses).
        ray_gpus_per_task: GPUs a Ray task reserves; None: 1 when ``trainer.accelerator`` is
            ``gpu``/``cuda`` (or ``auto`` and the cluster has GPUs), else 0.
    """

    launcher: Literal["local", "ray"] = "local"
    workers: int | Literal["auto"] = 1
    threads: int | None = None
    worker_retries: int = 1
    ray_address: str | None = None
    ray_cpus_per_task: float = 1.0
    ray_gpus_per_task: float | None = None

    def validate(self) -> LaunchOptions:
        """Fail before any training on options that cannot work, naming the value and the choices."""
        if self.launcher not in LAUNCHERS:
            raise ValueError(LAUNCHERS.unknown(self.launcher))
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be a positive integer or auto, got {self.workers!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if self.launcher == "ray" and self.workers != 1:
            raise ValueError(f"workers={self.workers} is for the local launcher; with Ray every run is a task placed by its resources (see ray_cpus_per_task)")
        if isinstance(self.worker_retries, bool) or not isinstance(self.worker_retries, int) or self.worker_retries < 0:
            raise ValueError(f"worker_retries must be an integer >= 0, got {self.worker_retries!r}")
        if not self.ray_cpus_per_task > 0:
            raise ValueError(f"ray_cpus_per_task must be positive, got {self.ray_cpus_per_task!r}")
        if self.ray_gpus_per_task is not None and self.ray_gpus_per_task < 0:
            raise ValueError(f"ray_gpus_per_task must be >= 0, got {self.ray_gpus_per_task!r}")
        if self.launcher == "ray":
            require_ray()
        return self

    @property
    def parallel(self) -> bool:
        return self.launcher == "ray" or self.workers == "auto" or self.workers > 1


def require_ray():
    """Import Ray, or fail with the command that installs it (Ray is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"the ray launcher needs Ray, which is not installed; install it with `{RAY_INSTALL}` (or `pip install '.[ray]'` in a checkout)") from None
    return ray


# --------------------------------------------------------------------------- shared worker code
def _quiet_worker(threads: int) -> None:
    """Torch threads and log levels of a worker process (the driver's bar is the only progress)."""
    import torch

    from roar.quiet import silence_third_party

    torch.set_num_threads(max(1, int(threads)))
    silence_third_party()


def _worker_config(cfg_dict: dict[str, Any]) -> BenchmarkConfig:
    """The config a worker runs with: one device per run (the one the worker is pinned to)."""
    cfg = config_from_dict(cfg_dict)
    cfg.trainer = {**cfg.trainer, "devices": 1}
    return cfg


def wants_gpu(cfg: BenchmarkConfig, gpus_available: bool) -> bool:
    """Whether the runs train on GPUs: ``gpu``/``cuda``, or ``auto`` (the default) where there are GPUs."""
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    return accelerator in GPU_ACCELERATORS or (accelerator == "auto" and gpus_available)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- local worker pool
def worker_devices(cfg: BenchmarkConfig, workers: int) -> list[int | None]:
    """The CUDA device of each worker (round robin), or None for each on CPU."""
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not wants_gpu(cfg, n_gpus > 0):
        return [None] * workers
    if n_gpus == 0:
        raise ValueError(f"trainer.accelerator is {cfg.trainer.get('accelerator')!r} but no CUDA device is visible; use accelerator: cpu")
    if workers > n_gpus:
        log.warning("%d workers share %d CUDA devices: %d runs per device at a time", workers, n_gpus, -(-workers // n_gpus))
    return [i % n_gpus for i in range(workers)]


def _init_pool_worker(device: int | None, threads: int) -> None:
    # Runs in the fresh (spawned) process before torch touches CUDA, so the pin holds for every run.
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    _quiet_worker(threads)
    from roar.data.sources import reuse_loaded_sources

    # for the worker's life: its runs read the dataset it loaded for the first one
    reuse_loaded_sources().__enter__()


def _pool_task(spec_dicts: list[dict[str, Any]], cfg_dict: dict[str, Any], out: str, base_ckpt: str, provenance: Any = None) -> list[dict[str, Any]]:
    """One job in a worker process (one run, or a stack of ``benchmark.stack`` cells); it records
    each run's row, with its fingerprint, and returns the outcomes in order."""
    specs, cfg, out_path = [RunSpec.from_dict(d) for d in spec_dicts], _worker_config(cfg_dict), Path(out)
    return run_job(specs, cfg, out_path, Path(base_ckpt), ResultsStore(out_path / "results.db"), provenance)


class _Slot:
    """One worker process pinned to one device: a single-process pool, restarted if it breaks.

    One pool per slot (rather than one pool of N) because a dying process breaks its whole pool:
    with one process per pool, only the run that was in it is affected, and the blame is exact.
    """

    def __init__(self, device: int | None, threads: int) -> None:
        self.device, self.threads = device, threads
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_pool_worker, initargs=(self.device, self.threads),
            )  # fmt: skip
        return self._pool

    def restart(self) -> None:
        self.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _death_message(spec: RunSpec, deaths: int) -> str:
    return (
        f"the worker process running {spec.run_id} died {deaths} time(s) without recording a result "
        "(killed: out of memory? a segfault? a preempted machine?); run the benchmark again to retry it"
    )


def run_local_pool(
    todo: Sequence[RunSpec],
    cfg: BenchmarkConfig,
    out: Path,
    base_ckpt: Path,
    results: ResultsStore,
    *,
    workers: int,
    worker_retries: int = 1,
    on_finished: OnFinished | None = None,
    provenance: Any = None,
    threads: int | None = None,
) -> None:
    """Run ``todo`` on ``workers`` worker processes of this machine, one job per process at a time.

    A job is one run, or with ``benchmark.stack`` the seeds of one cell trained as one stack
    (:func:`~roar.benchmark.stacked_jobs.plan_jobs`); a stack's runs are recorded one row each.

    Args:
        todo: the runs still to do.
        cfg: the benchmark config.
        out: the output folder (holds the base checkpoint, the ranks and ``results.db``).
        base_ckpt: the base checkpoint (already trained, ranks already computed).
        results: the driver's results store; workers write rows into the same file.
        workers: worker processes.
        worker_retries: reruns of a run whose worker died, before it is recorded as failed.
        on_finished: called in the driver with ``(spec, outcome)`` as each run ends.
        provenance: the grid's :class:`~roar.benchmark.provenance.GridProvenance`: each row records its fingerprint.
        threads: torch threads per worker (default: the cores shared out).
    """
    threads = threads or max(1, available_cores() // workers)
    slots = [_Slot(device, threads) for device in worker_devices(cfg, workers)]
    queue, deaths = deque(plan_jobs(list(todo), cfg)), Counter()
    running: dict[Future, tuple[_Slot, list[RunSpec]]] = {}
    cfg_dict, out_s, ckpt_s = cfg.to_dict(), str(out), str(base_ckpt)
    finished = on_finished or (lambda spec, outcome: None)
    clean = False
    try:
        while queue or running:
            busy = {id(slot) for slot, _ in running.values()}
            for slot in slots:
                if queue and id(slot) not in busy:
                    job = queue.popleft()
                    running[slot.pool().submit(_pool_task, [s.to_dict() for s in job], cfg_dict, out_s, ckpt_s, provenance)] = (slot, job)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                slot, job = running.pop(future)
                error = future.exception()
                if error is None:
                    for spec, outcome in zip(job, future.result(), strict=True):
                        finished(spec, outcome)
                    continue
                if isinstance(error, BrokenProcessPool):
                    slot.restart()
                recorded = results.finished_ids()
                for spec in job:
                    if spec.run_id in recorded:  # it finished before its worker died: nothing lost
                        finished(spec, {"status": "done", "note": "recorded before its worker died"})
                    elif isinstance(error, BrokenProcessPool):
                        deaths[spec.run_id] += 1
                        message = _death_message(spec, deaths[spec.run_id])
                        if deaths[spec.run_id] <= worker_retries:
                            log.warning("%s; retrying it in a fresh worker (%d of %d)", message, deaths[spec.run_id], worker_retries)
                            queue.appendleft([spec])  # alone: a stack that died is not tried again as one
                        else:
                            log.warning(message)
                            results.record(spec, status="failed", error=message, config=run_config(cfg, spec))
                            finished(spec, {"status": "failed", "error": message})
                    else:  # the worker survived but could not run or record the spec (e.g. the db was unwritable)
                        text = "".join(traceback.format_exception(error))
                        log.warning("run %s could not be run by its worker:\n%s", spec.run_id, text)
                        results.record(spec, status="failed", error=text, config=run_config(cfg, spec))
                        finished(spec, {"status": "failed", "error": text})
        clean = True
    finally:
        # On Ctrl-C the workers got the same SIGINT (same process group); do not wait for them.
        for slot in slots:
            slot.shutdown(wait=clean)
