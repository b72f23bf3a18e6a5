"""Preparing saliency maps for the sanity checks' similarity metrics: one concept, the map pipeline.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), section 3, never compare raw
``(C, H, W)`` maps: each map is first reduced over channels (signed, or as absolute values) and,
for SSIM and HOG, scaled per image to ``[0, 1]``, either min-max or by their ``abs_grayscale_norm``
99th-percentile clipping. This module holds those steps and the shape checks every metric of
:mod:`roar.sanity.similarity` runs first. Which reduction and normalisation are the paper's and
which are the libraries' is set out in :mod:`roar.sanity.settings` (Binder et al., arXiv
2211.12486, 2022, show the absolute-value choice moves results).

Constant maps: a min-max normalised constant map is all zeros, never 0/0 = NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from roar.sanity.settings import NORMALIZATIONS, PERCENTILE, REDUCTIONS, check_choice


def _as_maps(maps: torch.Tensor | np.ndarray, name: str = "maps") -> torch.Tensor:
    maps = torch.as_tensor(maps).detach()
    if maps.ndim not in (3, 4):
        raise ValueError(f"{name} must be shaped (B, C, H, W) or (B, H, W), got shape {tuple(maps.shape)}")
    if maps.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(maps.shape)})")
    if maps.is_floating_point() and not torch.isfinite(maps).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return maps


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_maps(a, "a"), _as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def aggregate_channels(maps: torch.Tensor, absolute: bool, reduction: str = "sum_abs") -> torch.Tensor:
    """Sum a batch of maps over channels, giving one ``(H, W)`` map per image.

    Args:
        maps: ``(B, C, H, W)`` maps, or ``(B, H, W)`` maps that have a single channel already.
        absolute: take absolute values (the "absolute value" variant of Adebayo et al. 2018)
            instead of keeping the signed sum.
        reduction: with ``absolute``, ``sum_abs`` (the sum of ``|a|``, Adebayo et al.) or
            ``abs_sum`` (``|sum a|``); see :mod:`roar.sanity.settings`.

    Returns:
        A ``(B, H, W)`` tensor.
    """
    maps = _as_maps(maps)
    check_choice("reduction", reduction, REDUCTIONS)
    if absolute and reduction == "sum_abs":
        maps = maps.abs()
    summed = maps.sum(dim=1) if maps.ndim == 4 else maps
    return summed.abs() if absolute and reduction == "abs_sum" else summed


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each image's map to ``[0, 1]``.

    A constant map (max == min) becomes all zeros instead of 0/0 = NaN.

    Args:
        maps: a batch of maps, any shape ``(B, ...)``.

    Returns:
        A floating-point tensor of the same shape with, per image, minimum 0 and maximum 1
        (or all zeros where the map is constant).
    """
    maps = torch.as_tensor(maps).detach()
    if maps.ndim < 2:
        raise ValueError(f"maps must have a batch dimension and at least one more, got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.to(torch.get_default_dtype())
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    # Dividing by 1 where the span is 0 turns a constant map into (x - x) / 1 = 0.
    out = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return out.reshape(maps.shape)


def percentile_normalize(maps: torch.Tensor, percentile: float = PERCENTILE) -> torch.Tensor:
    """Adebayo et al.'s ``abs_grayscale_norm`` scaling: ``clip((x - min) / (p - min), 0, 1)`` per image.

    ``p`` is the map's ``percentile``-th percentile (99 in their code; numpy's linear
    interpolation), so the top 1% of values saturate at 1 instead of squashing the rest toward 0.
    A map whose percentile equals its minimum becomes all zeros.

    Args:
        maps: a batch of (already absolute, channel-reduced) maps ``(B, ...)``.
        percentile: the clipping percentile, in ``(0, 100]``.

    Returns:
        A float64 tensor of the same shape, values in ``[0, 1]``.
    """
    maps = torch.as_tensor(maps).detach().to(torch.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps must have a batch dimension and at least one more, got shape {tuple(maps.shape)}")
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = torch.quantile(flat, percentile / 100.0, dim=1, keepdim=True)
    span = high - low
    out = ((flat - low) / torch.where(span > 0, span, torch.ones_like(span))).clamp(0.0, 1.0)
    return out.reshape(maps.shape)


_NORMALIZE = {"minmax": normalize_maps, "percentile": percentile_normalize}


def _abs_normalized_numpy(
    a: torch.Tensor, b: torch.Tensor, normalization: str = "minmax", reduction: str = "sum_abs"
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check_pair(a, b)
    normalize = _NORMALIZE[check_choice("normalization", normalization, NORMALIZATIONS)]
    na = normalize(aggregate_channels(a, absolute=True, reduction=reduction)).to(torch.float64).cpu().numpy()
    nb = normalize(aggregate_channels(b, absolute=True, reduction=reduction)).to(torch.float64).cpu().numpy()
    return na, nb
