"""``--workers auto``: how many local worker processes, and torch threads each, for this machine and model.

A ROAR grid (Hooker et al., NeurIPS 2019) is many independent retrains. A small model (the
digits demo's CNN, a few hundred thousand parameters) cannot keep two CPU threads busy: its
operations are too short, and two threads on one training mostly wait for each other. We measured
one thread per small model several times faster than two contending for it (issue 12), so a
small model gets one worker per core, one thread each. A large model's operations do split well
over threads, so it gets fewer workers with several threads each. On GPUs: one worker per device.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_MODEL_PARAMS = 5_000_000
"""Up to this many parameters a model trains fastest on one thread (small_cnn, mlp, resnet18 at 8-32 px)."""
THREADS_PER_LARGE_MODEL = 4
"""Threads of one worker training a larger model (ResNet50): past four, a CPU training step scales poorly."""


@dataclass(frozen=True)
class WorkerChoice:
    workers: int
    threads: int
    reason: str

    def describe(self) -> str:
        return f"--workers auto: {self.workers} worker(s) x {self.threads} thread(s) ({self.reason})"


def _count(n: int) -> str:
    """A parameter count for people: ``34``, ``120k``, ``25.6M`` (not ``3.4e-05M``, the synthetic linear model's)."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1_000 else str(n)


def choose_workers(cores: int, parameters: int, gpus: int = 0, runs: int | None = None) -> WorkerChoice:
    """The worker count and threads per worker for ``--workers auto``.

    Args:
        cores: CPU cores this process may use (``os.sched_getaffinity``).
        parameters: the model's parameter count.
        gpus: CUDA devices the runs train on (0: CPU).
        runs: runs still to do; never more workers than runs.
    """
    cores, cap = max(1, cores), max(1, runs) if runs is not None else None
    if gpus > 0:
        workers = min(gpus, cap) if cap else gpus
        return WorkerChoice(workers, max(1, cores // workers), f"{gpus} CUDA device(s): one worker each")
    size = f"{_count(parameters)} parameters"
    if parameters <= SMALL_MODEL_PARAMS:
        threads, why = 1, f"{cores} core(s), {size}: one thread per small model"
    else:
        threads, why = min(cores, THREADS_PER_LARGE_MODEL), f"{cores} core(s), {size}: {min(cores, THREADS_PER_LARGE_MODEL)} threads per large model"
    workers = max(1, cores // threads)
    if cap and workers > cap:
        workers, why = cap, f"{why}; {cap} run(s) to do"
    return WorkerChoice(workers, threads, why)


def resolve_workers(launch, cfg, parameters: int, runs: int):
    """``launch`` with ``workers: auto`` replaced by :func:`choose_workers`'s choice, printed in one line."""
    import dataclasses

    import torch

    from roar.benchmark.launchers import wants_gpu
    from roar.cpus import available_cores
    from roar.quiet import say

    if launch.workers != "auto":
        return launch
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = n_gpus if wants_gpu(cfg, n_gpus > 0) else 0
    choice = choose_workers(available_cores(), parameters, gpus=gpus, runs=runs)
    say(choice.describe())
    return dataclasses.replace(launch, workers=choice.workers, threads=choice.threads)
