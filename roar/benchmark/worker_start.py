"""The start of a ``--workers N`` process: Ctrl-C stops it without a traceback of its own.

Ctrl-C reaches every process of the terminal's process group, so the workers of
:mod:`roar.benchmark.local_pool` get it with the driver. The driver says what was interrupted and how
to resume (README, "Reruns: resumed, or refused, never mixed"); each worker printing its
``KeyboardInterrupt`` traceback (often from inside torch's import) would bury that line. This module
imports nothing heavy, so the handler is in place before the worker imports torch.
"""

from __future__ import annotations

import os
import signal


def _stop_quietly(signum: int, frame: object) -> None:
    # as a kill: the run in progress records nothing and is run again by the next identical command
    os._exit(128 + signum)


def init_pool_worker(device: int | None, threads: int) -> None:
    """Pin the worker to ``device`` (before torch touches CUDA), set its threads and quiet, and make
    Ctrl-C end it silently."""
    signal.signal(signal.SIGINT, _stop_quietly)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    from roar.benchmark.launchers import _quiet_worker
    from roar.data.sources import reuse_loaded_sources

    _quiet_worker(threads)
    # for the worker's life: its runs read the dataset it loaded for the first one
    reuse_loaded_sources().__enter__()
