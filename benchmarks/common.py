"""Shared pieces of the benchmarks: settings, devices, clocks, memory probes, fake data, tables.

Why the care with timing: the machines these run on are often shared (two CPU cores and other
jobs here), so one number on its own means little. Every figure is a ratio of two measurements
taken in the same process, interleaved (A, B, A, B, ...) so that a burst of load hits both
sides, with the same ``torch.set_num_threads``, and reported as the median over repeats.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------------------------
# Settings shared by every figure
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every figure needs to know about the run.

    Attributes:
        device: where models and batches live.
        threads: ``torch.set_num_threads`` for both sides of every ratio.
        repeats: interleaved repetitions per measurement (the median is reported).
        preset: ``smoke`` (test-suite sizes; numbers are meaningless), ``quick`` or ``full``.
        workdir: a temporary folder the figures may write into.
        clock: the clock every ratio is judged on: ``cpu`` (this process's CPU time; on a
            shared CPU it counts the work done, not the time spent waiting for a core) or
            ``wall``. Both are always recorded.
    """

    device: torch.device
    threads: int
    repeats: int
    preset: str
    workdir: Path
    clock: str = "wall"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device.type == "cuda" else "cpu"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid choices: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; valid choices here: cpu, auto")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human description of the device, for RESULTS.md."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} logical cores visible)"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers what it claims to."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "cpu")


def now() -> dict[str, float]:
    """Both clocks: wall time and the CPU time of this process (all its threads)."""
    return {"wall": time.perf_counter(), "cpu": time.process_time()}


def since(start: dict[str, float]) -> dict[str, float]:
    end = now()
    return {clock: end[clock] - start[clock] for clock in CLOCKS}


def time_call(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Wall and CPU seconds one call of ``fn`` takes, synchronised on ``device``."""
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return since(start)


def interleaved(
    calls: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    min_seconds: float = 0.0,
    max_rounds: int = 30,
) -> dict[str, dict[str, list[float]]]:
    """Time several calls alternately: ``warmup`` untimed rounds, then timed rounds.

    Alternating the calls (rather than timing all of A, then all of B) makes a burst of load
    from other jobs fall on both sides of a ratio. At least ``repeats`` rounds are timed, and
    more (up to ``max_rounds``) while any call has accumulated less than ``min_seconds`` of wall
    time, so cheap calls get enough samples for a stable median.

    Returns:
        ``{call: {"wall": [...], "cpu": [...]}}``.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {name: {clock: [] for clock in CLOCKS} for name in calls}
    rounds = 0
    while rounds < repeats or (rounds < max_rounds and min(sum(t["wall"]) for t in times.values()) < min_seconds):
        for name, fn in calls.items():
            for clock, seconds in time_call(fn, device).items():
                times[name][clock].append(seconds)
        rounds += 1
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's info messages, known warnings and progress output while a figure runs.

    stderr is swallowed too (the attribution store draws its progress bars there); exceptions
    still propagate.
    """
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------------------------
# Memory (Linux /proc)
# --------------------------------------------------------------------------------------------


def memory_status() -> dict[str, int]:
    """The process's ``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` and ``RssFile`` in bytes ({} off Linux)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS; False if unsupported.

    Writing ``5`` to ``/proc/self/clear_refs`` does this (Linux >= 4.0), so the peak read later
    belongs to the code that ran in between, not to anything the process did before.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakSampler:
    """Samples ``memory_status`` on a thread: the peak of anonymous memory (not in ``VmHWM``)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in memory_status().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in memory_status().items():
            self.peak[key] = max(self.peak.get(key, 0), value)


# --------------------------------------------------------------------------------------------
# Fake CIFAR-10 files: the real cifar10 source and datamodule path, on random pixels
# --------------------------------------------------------------------------------------------


def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write random images in the CIFAR-10 python format under ``root/cifar-10-batches-py``.

    The benchmarks then go through the real ``cifar10`` source, datamodule and masking code
    with CIFAR-shaped data and no download. ``n_train`` is spread over the five train files.

    Returns:
        ``root`` (what ``ImageDataModule(source="cifar10", root=...)`` takes).
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, n in [*((f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh, protocol=2)
    return root


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """Short, table-friendly formatting of a cell."""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``rows`` as a GitHub markdown table; ``columns`` are ``(key, header)`` pairs."""
    header = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])
