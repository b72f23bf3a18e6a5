"""Argument checks every attribution method shares: one clear error before any compute.

A method is called as ``method(inputs, target, indices=None)`` (see :mod:`roar.attribution.base`);
these turn what a user or a config passed (images, target classes, per-sample ids, a model,
numeric and choice parameters) into the tensors and numbers the methods use, or raise a
``ValueError`` that names the bad value and, for choices, the valid ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


def _check_model(model: Any, method: str) -> nn.Module:
    if model is None:
        raise ValueError(f"attribution method {method!r} needs a model; pass model=<nn.Module>")
    if not isinstance(model, nn.Module):
        raise ValueError(f"attribution method {method!r} needs an nn.Module, got {type(model).__name__}")
    return model


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must have shape (B, C, H, W) with B >= 1, got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    return inputs


def _check_indices(indices: Any, inputs: Tensor) -> Tensor:
    """Per-sample ids as a CPU LongTensor; positions in the batch when none are given."""
    batch = inputs.shape[0]
    if indices is None:
        return torch.arange(batch)
    indices = torch.as_tensor(indices)
    if indices.shape != (batch,) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(
            f"indices must be an integer tensor of shape ({batch},), got {indices.dtype} {tuple(indices.shape)}"
        )
    if (indices < 0).any():
        raise ValueError("indices must be non-negative sample ids")
    return indices.detach().to("cpu", torch.long)


def _check_target(target: Any, inputs: Tensor) -> Tensor:
    batch = inputs.shape[0]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = torch.full((batch,), int(target), dtype=torch.long)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be an int or an integer tensor of shape ({batch},), got {type(target).__name__}")
    if target.dim() == 0:
        target = target.expand(batch)
    if target.shape != (batch,) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of shape ({batch},), got {target.dtype} {tuple(target.shape)}")
    if (target < 0).any():
        raise ValueError("target classes must be non-negative")
    return target.detach().to(inputs.device, torch.long)


def _image_tensor(name: str, value: Any, ndim: tuple[int, ...]) -> Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}") from None
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dim() not in ndim:
        raise ValueError(f"{name} must be a tensor with {' or '.join(map(str, ndim))} dims, got shape {tuple(tensor.shape)}")
    return tensor.detach()
