"""Counting the arithmetic a call does, and the rate this device can do it at.

A speed-up has two sources: less work, or the same work done faster. A figure that reports both
(the FLOPs each side counts, and the FLOP/s of the device's fastest dense kernel as its ceiling) says
which of the two a target needs, and whether it is within reach at all: a path that must still
do ``F`` FLOPs cannot run faster than ``F / ceiling`` seconds, whatever its code looks like.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


class _Counting(TorchDispatchMode):
    """Adds up torch's own FLOP formulas (``torch.utils.flop_counter``) for every op dispatched.

    Not ``FlopCounterMode``: its module tracker hooks ``autograd.grad`` in a way that fails when a
    graph is walked more than once (``retain_graph``), which is exactly what a shared-layer
    cascade does. Ops without a formula (elementwise, pooling) count zero, as they do there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            shape = lambda t: t.shape if isinstance(t, torch.Tensor) else t  # noqa: E731 - a one-line tree_map leaf
            self.flops[str(func._overloadpacket)] += formula(*tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out))
        return out


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of one call of ``fn`` by op (``aten.convolution``, ``aten.convolution_backward``, ...), and ``total``."""
    counting = _Counting()
    with counting:
        fn()
    return {**dict(counting.flops), "total": sum(counting.flops.values())}


def dense_ceiling(device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of this device's fastest dense float32 kernel: the better of a square matmul and a 3x3 convolution.

    The convolution (batch 256, 64 -> 64 channels, 16 px, ``channels_last``) is the shape that
    dominates ``small_cnn``; oneDNN runs it faster than a matmul on a CPU. Best of ``repeats``
    calls after a warm-up, so what is measured is the kernel, not the load on a shared machine.
    """
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    x = torch.randn(256, 64, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    kernels = [(lambda: torch.mm(a, b), 2 * 1024**3), (lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 256 * 64 * 64 * 9 * 256)]
    return max(flops / _best_seconds(kernel, device, repeats) for kernel, flops in kernels)


def _best_seconds(kernel: Callable[[], Any], device: torch.device, repeats: int) -> float:
    kernel()  # warm-up: kernel selection, first-touch allocations
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        kernel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best
