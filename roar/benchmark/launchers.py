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

* ``local`` with ``workers=N`` (:mod:`roar.benchmark.local_pool`): N worker processes on this
  machine (``spawn``, never ``fork`` after torch has started threads), each pinned to one CUDA
  device through ``CUDA_VISIBLE_DEVICES`` (or, on CPU, given ``cores // N`` torch threads). Each
  worker records its own rows in ``results.db``; SQLite's WAL and one transaction per run make
  the concurrent writes safe (:mod:`roar.benchmark.results`).
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from roar.accelerator import GPU_ACCELERATORS
from roar.benchmark.cell import config_from_dict
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.registry import Registry

LAUNCHERS: Registry[str] = Registry("launcher")
"""Where a grid's runs go: ``local`` (this machine's processes) or ``ray`` (a Ray cluster)."""
LAUNCHERS.add("local", "worker processes on this machine (--workers N)")
LAUNCHERS.add("ray", "one Ray task per run (or stack) on a Ray cluster")
RAY_INSTALL = "pip install '.[ray]'"
"""Run in the roar checkout. Not ``roar[ray]``: roar is not on PyPI, whose ``roar`` is another project (a website generator)."""

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
        raise ImportError(f"the ray launcher needs Ray, which is not installed; install it with `{RAY_INSTALL}` in the roar checkout (or `pip install 'ray[default]>=2.9'`)") from None
    return ray


# --------------------------------------------------------------------------- shared worker code
# What a worker is, for the local pool (roar.benchmark.local_pool) and Ray (roar.benchmark.ray_launcher).
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


