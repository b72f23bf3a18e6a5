"""The start of a ``--workers N`` process: Ctrl-C stops it without a traceback of its own.

Ctrl-C reaches every process of the terminal's process group, so the workers of
:mod:`roar.benchmark.local_pool` get it with the driver. The driver says what was interrupted and how
to resume (README, "Reruns: resumed, or refused, never mixed"); each worker printing its
``KeyboardInterrupt`` traceback (often from inside torch's import) would bury that line. This module
imports nothing heavy, so the handler is in place before the worker imports torch. Before that, from
its first instruction, the worker holds Ctrl-C blocked (:func:`spawning_workers`): a Ctrl-C that
reaches it while the interpreter itself starts would otherwise print "Fatal Python error:
init_import_site" and a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


def _stop_quietly(signum: int, frame: object) -> None:
    # as a kill: the run in progress records nothing and is run again by the next identical command
    os._exit(128 + signum)


@contextlib.contextmanager
def spawning_workers() -> Iterator[None]:
    """Start workers with SIGINT blocked (a child keeps the signal mask across ``exec``), and Ctrl-C deferred.

    A worker holds the signal until :func:`init_pool_worker` has its quiet handler in place. The
    driver's own ``KeyboardInterrupt`` is raised on leaving the block, not inside it: raised halfway
    through a worker's start, it left a process the pool did not know yet, which then died on its
    parent's closed pipe with an ``EOFError`` traceback, and the driver could not stop it.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield  # Windows (no signal masks, no process groups), or a caller off the main thread (no handlers)
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A grid started in a script's background (``&``, ``nohup``) ignores SIGINT; an ignored signal
        # stays ignored across ``exec``, so its workers ignore it too (:func:`init_pool_worker`) instead
        # of dying alone and being retried by a driver that goes on.
        yield
        return
    from multiprocessing import resource_tracker

    # started now, not inside the block: starting it unblocks SIGINT in this thread on its way out
    resource_tracker.ensure_running()
    interrupted: list[int] = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        signal.signal(signal.SIGINT, handler)
    if interrupted:
        raise KeyboardInterrupt


def init_pool_worker(device: int | None, threads: int) -> None:
    """Pin the worker to ``device`` (before torch touches CUDA), set its threads and quiet, and make
    Ctrl-C end it silently (unless the driver ignores Ctrl-C: then the worker, which inherited that, does too)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _stop_quietly)
    if hasattr(signal, "pthread_sigmask"):  # held since spawning_workers; one that came meanwhile ends it now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    from roar.benchmark.launchers import _quiet_worker
    from roar.data.sources import reuse_loaded_sources

    _quiet_worker(threads)
    # for the worker's life: its runs read the dataset it loaded for the first one
    reuse_loaded_sources().__enter__()
