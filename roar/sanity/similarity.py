"""Similarity between two batches of saliency maps, as in the sanity checks.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), section 3, compare the map of
an image under the trained model with its map under a randomised model (or a model trained on
permuted labels) with four measures, all implemented here:

- ``spearman``: Spearman rank correlation of the channel-summed maps *without* absolute value;
- ``spearman_abs``: Spearman rank correlation of the channel-summed absolute maps;
- ``ssim``: structural similarity (Wang et al. 2004) of the absolute, min-max normalised maps;
- ``hog``: Pearson correlation of the histograms of oriented gradients (Dalal & Triggs 2005)
  of the absolute, min-max normalised maps.

Binder et al., "Shortcomings of Top-Down Randomization-Based Sanity Checks for Evaluations of
Deep Neural Network Explanations" (arXiv 2211.12486, 2022) discuss how much the choice between
the raw and absolute variants moves the results; that is why both Spearman variants are kept.

Every metric takes two batches of maps shaped ``(B, C, H, W)`` or ``(B, H, W)`` and returns a
float32 tensor ``(B,)``, one similarity per image, on the device of the first batch.

Constant maps: a correlation with a constant vector is undefined (0/0). Here it is 0, never
NaN, because "no structure in common" is what a constant map means for a sanity check and NaN
would poison every mean taken downstream. A constant map compared with itself therefore scores
0 for ``spearman``, ``spearman_abs`` and ``hog`` (its HOG vector is all zeros). SSIM is defined
for constant maps (its stabilising constants keep it finite): two equal constant maps score 1.

The maps are checked, channel-reduced and normalised before any metric sees them by
:mod:`roar.sanity.map_prep`; its functions are re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import numpy as np
import torch
from skimage.feature import hog as _skimage_hog
from skimage.metrics import structural_similarity

from roar.registry import Registry
from roar.sanity.map_prep import (
    _abs_normalized_numpy,
    _check_pair,
    aggregate_channels as aggregate_channels,
    normalize_maps as normalize_maps,
    percentile_normalize as percentile_normalize,
)
from roar.sanity.settings import NORMALIZATIONS, REDUCTIONS, check_choice

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SSIM_MAX_WINDOW = 7
"""scikit-image's default SSIM window side; smaller maps get the largest odd side that fits."""

HOG_ORIENTATIONS = 9
HOG_MAX_CELL = 8
HOG_CELLS_PER_BLOCK = (2, 2)
"""Dalal & Triggs' (CVPR 2005) 9 orientations, 8x8-pixel cells and 2x2-cell blocks."""


def _pearson_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows of two ``(B, N)`` tensors, 0 where a row is constant."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    denom = (x.square().sum(dim=1) * y.square().sum(dim=1)).sqrt()
    num = (x * y).sum(dim=1)
    corr = torch.where(denom > 0, num / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(num))
    # Rounding can push |r| a hair above 1 for identical rows.
    return corr.clamp(-1.0, 1.0)


def _rank_rows(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``(B, N)``, ties given the average of their ranks.

    That is scipy's ``rankdata(method="average")``, vectorised over the batch: a value's
    average rank is the mean of the first and last positions its run of equal values takes
    in the sorted row, both found with a binary search.
    """
    x = x.to(torch.float64).contiguous()
    ordered = x.sort(dim=1).values
    first = torch.searchsorted(ordered, x, right=False)
    last = torch.searchsorted(ordered, x, right=True)
    return (first + last + 1).to(torch.float64) / 2


def _spearman(a: torch.Tensor, b: torch.Tensor, absolute: bool, reduction: str = "sum_abs") -> torch.Tensor:
    a, b = _check_pair(a, b)
    flat_a = aggregate_channels(a, absolute, reduction).reshape(a.shape[0], -1)
    flat_b = aggregate_channels(b, absolute, reduction).reshape(b.shape[0], -1)
    return _pearson_rows(_rank_rows(flat_a), _rank_rows(flat_b)).to(device=a.device, dtype=torch.float32)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the signed, channel-summed maps (Adebayo et al. 2018).

    Ranks with ties averaged, then Pearson: equal to ``scipy.stats.spearmanr``. A constant map
    scores 0 (see the module docstring).

    Args:
        a: reference maps ``(B, C, H, W)`` or ``(B, H, W)``.
        b: maps to compare, the same shape.

    Returns:
        ``(B,)`` float32 correlations in ``[-1, 1]``.
    """
    return _spearman(a, b, absolute=False)


def spearman_abs(a: torch.Tensor, b: torch.Tensor, *, reduction: str = "sum_abs") -> torch.Tensor:
    """Spearman rank correlation of the channel-summed absolute maps (Adebayo et al. 2018).

    Args:
        a: reference maps ``(B, C, H, W)`` or ``(B, H, W)``.
        b: maps to compare, the same shape.
        reduction: ``sum_abs`` or ``abs_sum`` (see :func:`aggregate_channels`).

    Returns:
        ``(B,)`` float32 correlations in ``[-1, 1]``; 0 where a map is constant.
    """
    return _spearman(a, b, absolute=True, reduction=reduction)


def ssim_window(height: int, width: int) -> int:
    """The SSIM window side used for ``(height, width)`` maps.

    scikit-image's default 7, or, for smaller maps, the largest odd side that fits in the
    shorter side (5 for 6x6 maps, 3 for 4x4 maps): scikit-image needs an odd window no larger
    than the image. 3 is the smallest that works (a 1-pixel window has no variance).
    """
    side = min(height, width)
    if side < 3:
        raise ValueError(f"SSIM needs maps of at least 3x3 pixels, got {height}x{width}")
    return min(SSIM_MAX_WINDOW, side if side % 2 == 1 else side - 1)


def ssim(
    a: torch.Tensor, b: torch.Tensor, win_size: int | None = None, *, normalization: str = "minmax", reduction: str = "sum_abs"
) -> torch.Tensor:
    """Structural similarity of the absolute, normalised maps (Adebayo et al. 2018, Wang et al. 2004).

    Both batches are channel-summed as absolute values and min-max normalised per image to
    ``[0, 1]``; SSIM is then ``skimage.metrics.structural_similarity`` with ``data_range=1.0``
    set explicitly (the default would infer it from the dtype), scikit-image's uniform window
    and sample covariance, and the window side from :func:`ssim_window` unless given.

    Args:
        a: reference maps ``(B, C, H, W)`` or ``(B, H, W)``.
        b: maps to compare, the same shape.
        win_size: odd window side, at most the shorter map side; ``None`` for :func:`ssim_window`.
        normalization: ``minmax`` or ``percentile`` (:func:`percentile_normalize`).
        reduction: ``sum_abs`` or ``abs_sum`` (see :func:`aggregate_channels`).

    Returns:
        ``(B,)`` float32 SSIM values (1 for identical maps).
    """
    na, nb = _abs_normalized_numpy(a, b, normalization, reduction)
    window = ssim_window(*na.shape[1:]) if win_size is None else win_size
    if window < 3 or window % 2 == 0 or window > min(na.shape[1:]):
        raise ValueError(f"win_size must be odd, >= 3 and <= the shorter map side {min(na.shape[1:])}, got {window}")
    values = [structural_similarity(x, y, win_size=window, data_range=1.0) for x, y in zip(na, nb)]
    return torch.tensor(values, dtype=torch.float32, device=torch.as_tensor(a).device)


def hog_cell(height: int, width: int) -> int:
    """The HOG cell side used for ``(height, width)`` maps.

    Dalal & Triggs' 8 pixels, shrunk to a quarter of the shorter side for small maps (2 for
    8x8 maps, 1 for 4x4 maps) so that even tiny maps have a few cells and blocks to compare.
    """
    side = min(height, width)
    if side < HOG_CELLS_PER_BLOCK[0]:
        raise ValueError(f"HOG needs maps of at least {HOG_CELLS_PER_BLOCK[0]}x{HOG_CELLS_PER_BLOCK[0]} pixels, got {height}x{width}")
    return min(HOG_MAX_CELL, max(1, side // 4))


def hog_features(maps: np.ndarray, pixels_per_cell: int) -> np.ndarray:
    """HOG feature vectors ``(B, F)`` of a batch of 2-D maps ``(B, H, W)``, via scikit-image."""
    return np.stack(
        [
            _skimage_hog(
                m,
                orientations=HOG_ORIENTATIONS,
                pixels_per_cell=(pixels_per_cell, pixels_per_cell),
                cells_per_block=HOG_CELLS_PER_BLOCK,
                block_norm="L2-Hys",
                feature_vector=True,
            )
            for m in maps
        ]
    )


def hog(
    a: torch.Tensor, b: torch.Tensor, pixels_per_cell: int | None = None, *, normalization: str = "minmax", reduction: str = "sum_abs"
) -> torch.Tensor:
    """Pearson correlation of the HOG features of the absolute, normalised maps (Adebayo et al. 2018).

    Both batches are channel-summed as absolute values and min-max normalised per image; the
    features are ``skimage.feature.hog`` with 9 orientations, 2x2-cell blocks, L2-Hys block
    normalisation and the cell side from :func:`hog_cell` unless given.

    Args:
        a: reference maps ``(B, C, H, W)`` or ``(B, H, W)``.
        b: maps to compare, the same shape.
        pixels_per_cell: cell side in pixels; ``None`` for :func:`hog_cell`.
        normalization: ``minmax`` or ``percentile`` (:func:`percentile_normalize`).
        reduction: ``sum_abs`` or ``abs_sum`` (see :func:`aggregate_channels`).

    Returns:
        ``(B,)`` float32 correlations in ``[-1, 1]``; 0 where a HOG vector is constant
        (a constant map has an all-zero HOG vector).
    """
    na, nb = _abs_normalized_numpy(a, b, normalization, reduction)
    cell = hog_cell(*na.shape[1:]) if pixels_per_cell is None else pixels_per_cell
    if cell < 1 or min(na.shape[1:]) < cell * HOG_CELLS_PER_BLOCK[0]:
        raise ValueError(f"pixels_per_cell={cell} leaves fewer than {HOG_CELLS_PER_BLOCK[0]} cells on a {na.shape[1]}x{na.shape[2]} map")
    corr = _pearson_rows(torch.from_numpy(hog_features(na, cell)), torch.from_numpy(hog_features(nb, cell)))
    return corr.to(device=torch.as_tensor(a).device, dtype=torch.float32)


SIMILARITY_METRICS: Registry[SimilarityFn] = Registry("similarity metric", entry_point_group="roar.metrics", ordered=True)
"""Metric name -> function ``(a, b) -> (B,)``, in the order Adebayo et al. (2018) report them;
``register_metric("name")`` adds a user's."""


def register_metric(name: str | None = None, *, override: bool = False):
    """Register a similarity ``(a, b) -> (B,)`` of two batches of maps, as the built-ins are."""
    return SIMILARITY_METRICS.register(name, override=override)


for _name, _fn in (("spearman", spearman), ("spearman_abs", spearman_abs), ("ssim", ssim), ("hog", hog)):
    register_metric(_name)(_fn)


def list_metrics() -> list[str]:
    """The metric names :func:`get_metric` accepts, in the paper's order."""
    return SIMILARITY_METRICS.names()


def get_metric(name: str) -> SimilarityFn:
    """Look a similarity metric up by name.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    return SIMILARITY_METRICS.get(name)


def _options_for(fn: SimilarityFn, options: dict[str, str]) -> dict[str, str]:
    """The map options (``normalization``, ``reduction``) that ``fn`` takes as keywords."""
    try:
        accepted = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in options.items() if k in accepted}


def compare_maps(
    reference: torch.Tensor,
    other: torch.Tensor,
    metrics: Iterable[str] | None = None,
    *,
    normalization: str = "minmax",
    reduction: str = "sum_abs",
) -> dict[str, torch.Tensor]:
    """Every requested metric (all by default) between two batches of maps.

    Args:
        reference: maps of the original model ``(B, C, H, W)`` or ``(B, H, W)``.
        other: maps to compare, the same shape.
        metrics: names from :func:`list_metrics`; ``None`` for all of them.
        normalization: ``minmax`` or ``percentile``, for the metrics that normalise (SSIM, HOG).
        reduction: ``sum_abs`` or ``abs_sum``, for the metrics on absolute maps. A user's
            metric receives either option only if it takes it as a keyword.

    Returns:
        ``{metric name: (B,) float32 similarities}``.
    """
    options = {
        "normalization": check_choice("normalization", normalization, NORMALIZATIONS),
        "reduction": check_choice("reduction", reduction, REDUCTIONS),
    }
    names = list_metrics() if metrics is None else list(metrics)
    fns = {name: get_metric(name) for name in names}
    return {name: fn(reference, other, **_options_for(fn, options)) for name, fn in fns.items()}
