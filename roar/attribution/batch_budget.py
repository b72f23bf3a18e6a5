"""The attribution batch size from a memory budget: ``batch_size: auto``.

ROAR (Hooker et al., NeurIPS 2019) ranks every train and test image once with the base model,
before any retrain; on a GPU that pass is fastest with the largest batch that fits. ``auto``
measures what one more image costs and picks the largest power of two whose predicted peak fits
a budget:

* **CUDA**: the method runs on two small batches of the real data with the real model, and
  ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``) gives each batch's peak
  above what was allocated before. The batch is capped at :data:`MAX_AUTO_BATCH` (a rank chunk).
* **CPU** (and any other device): the same two batches run under a ``TorchDispatchMode`` that
  adds up the bytes of every tensor an op creates (views and in-place results excluded): every
  activation, gradient and temporary, none of them freed, so an upper bound of the peak. The free
  memory is ``MemAvailable`` of ``/proc/meminfo``. Larger batches do not run faster on cores, so
  ``auto`` never exceeds :data:`CPU_MAX_AUTO_BATCH`, today's integer default.

The budget is a fraction of the free memory (default :data:`DEFAULT_BUDGET`) or a size such as
``"8GiB"``. The peak is modelled as ``fixed + per_image * batch`` from the two probes (their
difference is the per-image cost), which over-estimates methods that chunk their own work
(``max_batch_size``, ``internal_batch_size``): ``auto`` errs small, never into an out-of-memory.

The batch size changes no map except for methods whose references are the batch's other images
(GradientSHAP without ``baselines``); for those ``auto`` is :data:`DEFAULT_BATCH_SIZE`, so their
cached ranks never depend on the machine (:func:`roar.attribution.compute.method_fingerprint`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

AUTO = "auto"
DEFAULT_BATCH_SIZE = 256
"""The integer default, and what ``auto`` means for batch-dependent methods."""
MAX_AUTO_BATCH = 4096
"""``auto`` never exceeds this on CUDA (the default rank chunk: one batch per resumable unit)."""
CPU_MAX_AUTO_BATCH = DEFAULT_BATCH_SIZE
"""``auto`` never exceeds this off CUDA: cores are busy at a few images; the budget only lowers it."""
DEFAULT_BUDGET = 0.5
"""Fraction of the free memory the attribution batch may take."""
PROBE_IMAGES = 4
"""The probes run ``k`` and ``2k`` images, ``k`` at most this (fewer on a tiny dataset)."""

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$", re.IGNORECASE)


def check_batch_size(value: Any, name: str = "attribution batch_size") -> int | str:
    """A positive integer or ``auto``, refused with the choices before any compute."""
    if value == AUTO and isinstance(value, str):
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or 'auto' (the largest batch within the memory budget), got {value!r}")
    return value


def parse_size(text: str) -> int:
    """``"8GiB"``, ``"512 MiB"``, ``"2GB"`` -> bytes (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000)."""
    match = _SIZE.match(text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"memory size {text!r} is not a number with a unit; valid units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. '8GiB')")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"memory size {text!r} is zero; give a positive size (e.g. '8GiB')")
    return size


def check_budget(value: Any, name: str = "attribution memory_budget") -> float | int:
    """A fraction in ``(0, 1]`` of the free memory (float), or a size (``"8GiB"``: bytes, int)."""
    if isinstance(value, str):
        try:
            value = float(value)  # "0.5" from a command line is a fraction
        except ValueError:
            try:
                return parse_size(value)
            except ValueError as err:
                raise ValueError(f"{name} {value!r}: {err}; or give a fraction in (0, 1] of the free memory (default {DEFAULT_BUDGET})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1] of the free memory (default {DEFAULT_BUDGET}) or a size such as '8GiB', got {value!r}")
    return float(value)


def choose_batch_size(per_image_bytes: float, budget_bytes: float, *, num_images: int, fixed_bytes: float = 0, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest power of two ``b <= cap`` with ``fixed_bytes + b * per_image_bytes <= budget_bytes``.

    At least 1 (one image is the least a batch can be, whatever it costs); at most ``num_images``
    (a dataset smaller than the choice is one batch).
    """
    if num_images < 1 or cap < 1:
        raise ValueError(f"num_images and cap must be positive, got {num_images} and {cap}")
    per_image = max(float(per_image_bytes), 1.0)  # a method that allocates nothing still holds its images
    batch = 1
    while batch * 2 <= cap and fixed_bytes + batch * 2 * per_image <= budget_bytes:
        batch *= 2
    return min(batch, num_images)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: ``torch.cuda.mem_get_info`` on CUDA (after emptying the cache), else ``MemAvailable``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the caching allocator holds unused is free to us
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class _AllocatedBytes(TorchDispatchMode):
    """Adds up the bytes of every new tensor an op returns (views and in-place results alias and are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for i, tensor in enumerate(tree_flatten(out)[0]):
            aliases = returns and returns[min(i, len(returns) - 1)].alias_info is not None
            if isinstance(tensor, torch.Tensor) and not aliases:
                self.total += tensor.untyped_storage().nbytes()
        return out


def probe_bytes(step: Callable[[int], Any], batch: int, device: torch.device) -> int:
    """Memory one call ``step(batch)`` needs above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(batch)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    with _AllocatedBytes() as counter:
        step(batch)
    return counter.total


def estimate_cost(step: Callable[[int], Any], num_images: int, device: torch.device) -> tuple[float, float]:
    """``(per_image_bytes, fixed_bytes)`` of ``step`` from batches of ``k`` and ``2k`` images."""
    k = max(1, min(PROBE_IMAGES, num_images // 2))
    if device.type == "cuda":
        step(k)  # warm-up: cuDNN's first call per shape allocates workspaces a steady batch reuses
    small = probe_bytes(step, k, device)
    if 2 * k > num_images:  # one image: no second point
        return float(small), 0.0
    large = probe_bytes(step, 2 * k, device)
    per_image = (large - small) / k
    if per_image <= 0:  # noise, or a method whose cost does not grow: the larger probe per image
        per_image = large / (2 * k)
    return per_image, max(0.0, small - k * per_image)


def auto_batch_size(step: Callable[[int], Any], num_images: int, device: torch.device, budget: float | int = DEFAULT_BUDGET) -> tuple[int, str]:
    """The batch ``auto`` picks for ``step`` (runs ``step(n)`` on the first ``n`` images), and one line saying why.

    Args:
        step: runs the whole per-batch work (attributions, scores, ranks) on ``n`` real images.
        num_images: the dataset's size (a cap).
        device: where ``step`` computes.
        budget: :func:`check_budget`'s result: a fraction of the free memory (float), or bytes (int).
    """
    if isinstance(budget, float):
        check_budget(budget, "budget")  # a fraction; bytes are an int
    per_image, fixed = estimate_cost(step, num_images, device)
    free = free_memory(device)
    if isinstance(budget, float):
        budget_bytes, said = budget * free, f"budget {budget:g} of {_gib(free)} free"
    else:
        budget_bytes, said = min(budget, free), f"budget {_gib(budget)}, {_gib(free)} free"
    cap = MAX_AUTO_BATCH if device.type == "cuda" else CPU_MAX_AUTO_BATCH
    batch = choose_batch_size(per_image, budget_bytes, num_images=num_images, fixed_bytes=fixed, cap=cap)
    return batch, f"attribution batch: {batch} (auto, {said}; {per_image / 2**20:.2f} MiB per image on {device.type})"


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"
