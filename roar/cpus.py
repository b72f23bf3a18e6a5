"""The CPU cores this process may use: what worker and thread counts are sized by."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores in this process's affinity mask (a container's or ``taskset``'s limit), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
