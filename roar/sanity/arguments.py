"""The sanity checks' names and defaults, and the argument checks run before anything is computed.

Bad input (an unknown metric, order, method or method parameter; a bad ``stack``) fails here,
naming the bad value and the valid choices, before any map of Adebayo et al.'s (NeurIPS 2018)
checks is computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from roar.attribution import TARGETS, get_method
from roar.attribution.registry import resolved_params
from roar.sanity.randomization import ORDERS
from roar.sanity.revisited import EMPRT, SMPRT
from roar.sanity.similarity import list_metrics

DATA_CHECK = "data"
CHECKS = (*ORDERS, DATA_CHECK, SMPRT, EMPRT)
"""Check names as they appear in keys and in ``sanity.csv``: the randomisation orders, ``data``,
then sMPRT and eMPRT (Hedström et al. 2023)."""

DATA_LAYER = "permuted_labels"
"""The ``layer`` of the data-randomisation row: the whole model, trained on permuted labels."""

CONTROL = "noise"
"""The control of Binder et al. (2022): i.i.d. Gaussian maps that never read the model."""

DEFAULT_METHODS = ("gradient", "guided_backprop", CONTROL)
DEFAULT_STACK = 8
"""Randomised models explained together by the batched path (bounds the memory of the kept weights)."""
DEFAULT_METRICS = ("spearman", "spearman_abs", "ssim", "hog")


def _names(kind: str, values: Iterable[str] | str, choices: Sequence[str]) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        raise ValueError(f"{kind} is empty; valid {kind}: {', '.join(choices)}")
    for value in values:
        if value not in choices:
            raise ValueError(f"unknown {kind[:-1]} {value!r}; valid {kind}: {', '.join(choices)}")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{kind} lists {', '.join(map(repr, duplicates))} more than once")
    return values


def check_metrics(metrics: Iterable[str] | str) -> list[str]:
    """The metric names, checked against :func:`roar.sanity.similarity.list_metrics`."""
    return _names("metrics", metrics, list_metrics())


def check_orders(orders: Iterable[str] | str) -> list[str]:
    """The randomisation orders, checked against :data:`roar.sanity.randomization.ORDERS`."""
    return _names("orders", orders, ORDERS)


def check_stack(stack: Any) -> int | str:
    """``stack``: ``auto`` or a positive integer, the models explained per batched call (1: one by one)."""
    if stack == "auto":
        return stack
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise ValueError(f"stack must be 'auto' or a positive integer (models per batched call; 1 = one by one), got {stack!r}")
    return int(stack)


def resolve_stack(stack: int | str, network: nn.Module, images: Tensor) -> int:
    """``auto``: :data:`DEFAULT_STACK` for a small model (at most 12M parameters, images at most
    64 px) on CUDA, where one such model leaves the device idle; else 1. On a CPU the work is
    compute-bound and the batched call was measured no faster (``benchmarks/sanity_mprt.py``);
    a large model's K stacked copies and their activations would cost K times the memory.
    """
    if stack != "auto":
        return check_stack(stack)
    small = sum(p.numel() for p in network.parameters()) <= 12_000_000 and max(images.shape[-2:]) <= 64
    return DEFAULT_STACK if images.device.type == "cuda" and small else 1


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return target


# Names of the real model's layers, which the probe lacks (LRP's rules: are checked for their syntax by resolved_params)
_MODEL_SPECIFIC_PARAMS = frozenset({"layer", "rules"})


class _Probe(nn.Module):
    """A tiny conv net to build methods on while checking their parameters (nothing is run)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x)).flatten(1)


def check_methods(
    methods: Iterable[str] | str, method_params: Mapping[str, Mapping[str, Any]] | None = None
) -> list[str]:
    """The method names and their parameters, checked by building each method once.

    Args:
        methods: registry keys (see :func:`roar.attribution.list_methods`).
        method_params: optional ``{method: {param: value}}``; entries for methods not in
            ``methods`` are checked and ignored.

    Returns:
        The method names as a list.

    Raises:
        ValueError: for an unknown method (the message lists the valid ones), or an unknown or
            invalid parameter.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("methods is empty; name at least one attribution method (e.g. [gradient, noise])")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"methods lists {', '.join(map(repr, duplicates))} more than once")
    params = dict(method_params or {})
    with torch.random.fork_rng(devices=[]):  # initialising the probe must not move the caller's random stream
        probe = _Probe()
    # Entries for methods not requested are checked too (a config may set parameters for
    # methods a command line then leaves out), and otherwise ignored.
    for name in dict.fromkeys([*methods, *params]):
        given = params.get(name) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"method_params[{name!r}] must be a mapping of parameter names to values, got {given!r}")
        resolved_params(name, dict(given))  # an unknown method, definition or parameter fails here, naming it
        # A layer name (layer:, the keys of rules:) refers to the real model, not the probe: it is
        # checked when the method is first built on the model. Every other value is checked now.
        get_method(name, probe, **{k: v for k, v in given.items() if k not in _MODEL_SPECIFIC_PARAMS})
    return methods
