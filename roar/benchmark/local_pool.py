"""The ``local`` launcher: the grid's runs on N worker processes of this machine.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019)
retrain a model for every method x threshold x seed x mode; on one machine with several GPUs (or
many cores) those runs are independent, so ``--workers N`` runs N at a time. What a worker gets
and runs is the contract of :mod:`roar.benchmark.launchers` (shared with
:mod:`roar.benchmark.ray_launcher`); this module is the scheduling around it.

Workers are ``spawn``ed (never ``fork`` after torch has started threads), each pinned to one CUDA
device through ``CUDA_VISIBLE_DEVICES`` or, on CPU, given ``cores // N`` torch threads. Each
records its own rows in ``results.db`` (SQLite's WAL and one transaction per run make the
concurrent writes safe). A worker that dies mid-run (out-of-memory kill, segfault) loses only that
run: it is retried up to ``worker_retries`` times in a fresh process, then recorded as failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import traceback
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from roar.benchmark.cell import run_config
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import OnFinished, _worker_config, wants_gpu
from roar.cpus import available_cores
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore
from roar.benchmark.stacked_jobs import plan_jobs, run_job
from roar.benchmark.worker_start import init_pool_worker, spawning_workers

log = logging.getLogger(__name__)


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
                initializer=init_pool_worker, initargs=(self.device, self.threads),
            )  # fmt: skip
        return self._pool

    def restart(self) -> None:
        self.shutdown(wait=False)

    def stop(self) -> None:
        """End the worker now (Ctrl-C, a driver error): its run records nothing, as when it is killed.

        A worker still starting holds Ctrl-C blocked (:func:`spawning_workers`) and would outlive the
        driver; its run in progress, if any, is run again by the next identical command.
        """
        if self._pool is not None:
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.kill()
        self.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


def _death_message(spec: RunSpec, deaths: int) -> str:
    return (
        f"the worker process running {spec.run_id} died {deaths} time(s) without recording a result "
        "(killed: out of memory? a segfault? a preempted machine?)"
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
                    with spawning_workers():  # a new slot's worker is started here
                        future = slot.pool().submit(_pool_task, [s.to_dict() for s in job], cfg_dict, out_s, ckpt_s, provenance)
                    running[future] = (slot, job)
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
                        else:  # only now is a rerun of the command the user's to start
                            message += "; run the benchmark again to retry it"
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
        for slot in slots:  # on Ctrl-C (or a driver error) the workers are ended, not waited for
            slot.shutdown() if clean else slot.stop()
