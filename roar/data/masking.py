"""Pure tensor functions for ROAR/KAR: attributions -> scores -> ranks -> masked images.

ROAR ("RemOve And Retrain") and KAR ("Keep And Retrain") come from Hooker et al., "A Benchmark for
Interpretability Methods in Deep Neural Networks", NeurIPS 2019. A saliency method ranks every
feature of every image; a threshold ``t`` then replaces the ``round(t * F)`` most important
features with an uninformative value (ROAR) or all but them (KAR), and a model is retrained on the
modified data.

The contract (see DESIGN.md, "Ranks"):

* a *feature* is one channel value (``granularity="element"``, as the original ROAR code does) or
  one pixel with all its channels (``granularity="pixel"``, ranked by the channel-summed score);
* the ranked score is ``abs`` (default), ``square`` or ``raw`` (signed) attribution;
* rank 0 is the most important feature; ties are broken by a seeded hash of
  ``(seed, sample index, feature)``, never by position, so the order of equal scores does not
  depend on the batch a sample arrives in;
* the replacement value is the training per-channel mean (the paper) or each image's own mean;
  or it is imputed from the image itself (:mod:`roar.data.imputation`): ROAD's ``noisy_linear``
  (Rong, Leemann et al., ICML 2022) or a Gaussian ``blur`` control.

Everything here is device-agnostic and vectorised over the batch: :func:`mask_images` runs on the
accelerator for every training batch, so it is a comparison, a reshape and a ``torch.where``.

Scores and ranks (the first half) are computed by :mod:`roar.data.ranking`; this module applies a
threshold's mask, and re-exports the ranking names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from decimal import ROUND_HALF_UP, Decimal

import torch

from roar.data.ranking import (  # the rank half of the contract; its old home re-exports it
    GRANULARITIES,
    SCORES,
    _check_choice,
    attribution_scores,
    check_granularity,
    check_score,
    num_features,
    ranks_from_scores,
    tie_break_keys,
)


MODES = ("roar", "kar")
FILLS = ("image_mean", "noisy_linear", "blur")
IMPUTING_FILLS = ("noisy_linear", "blur")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`MODES`, else raise ValueError."""
    return _check_choice("mode", mode, MODES)


def num_masked(threshold: float, num_features: int) -> int:
    """How many features a threshold replaces: ``round(t * F)``, halves rounded up.

    The threshold is read as the decimal it prints as (``0.3`` is 0.3, not 0.29999...), so
    ``num_masked(0.3, 5) == 2`` and ``num_masked(0.5, 5) == 3`` exactly.

    Args:
        threshold: fraction in ``[0, 1)``.
        num_features: ``F`` (positive).
    """
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}") from None
    if not 0.0 <= t < 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    k = (Decimal(repr(t)) * int(num_features)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(k)


def _as_int_ranks(ranks: torch.Tensor) -> torch.Tensor:
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be (B, F), got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer tensor, got dtype {ranks.dtype}")
    # The store keeps ranks as uint16, for which torch implements few operations (not comparison).
    return ranks if ranks.dtype in (torch.int32, torch.int64) else ranks.to(torch.int64)


def feature_mask(ranks: torch.Tensor, threshold: float, mode: str = "roar") -> torch.Tensor:
    """Which features a threshold replaces.

    Args:
        ranks: ``(B, F)`` integer ranks, 0 = most important.
        threshold: fraction in ``[0, 1)``; ``k = round(t * F)``.
        mode: ``roar`` replaces the ``k`` most important features; ``kar`` replaces all the others.

    Returns:
        ``(B, F)`` bool, True where a feature is replaced.
    """
    check_mode(mode)
    ranks = _as_int_ranks(ranks)
    k = num_masked(threshold, ranks.shape[1])
    return ranks < k if mode == "roar" else ranks >= k


def _fill_value(images: torch.Tensor, fill: torch.Tensor | Sequence[float] | str | None) -> torch.Tensor:
    if isinstance(fill, str):
        _check_choice("fill", fill, FILLS)
        return images.mean(dim=(2, 3), keepdim=True)
    if fill is None:
        raise ValueError(f"fill is required: a (C,) tensor of the training per-channel mean, or one of {', '.join(FILLS)}")
    value = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if value.shape != (images.shape[1],):
        raise ValueError(
            f"fill must be a ({images.shape[1]},) per-channel mean or one of {', '.join(FILLS)}, got shape {tuple(value.shape)}"
        )
    return value.view(1, -1, 1, 1)


def apply_mask(
    images: torch.Tensor,
    mask: torch.Tensor,
    fill: torch.Tensor | Sequence[float] | str,
    granularity: str = "element",
    *,
    indices: torch.Tensor | None = None,
    fill_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Replace the masked features of each image with a fill value.

    Args:
        images: ``(B, C, H, W)`` images.
        mask: ``(B, F)`` bool, True where a feature is replaced (``F`` as for ``granularity``).
        fill: a ``(C,)`` per-channel value (the training mean, as in Hooker et al.),
            ``"image_mean"`` for each image's own per-channel mean, ``"noisy_linear"`` (ROAD's
            imputation) or ``"blur"`` (a Gaussian-blurred copy of the image).
        granularity: ``element`` (one value per feature) or ``pixel`` (all channels of a pixel).
        indices: ``(B,)`` global sample indices; they seed ``noisy_linear``'s noise per image.
        fill_options: for ``noisy_linear``: ``noise_std``, ``seed``, ``tol``, ``max_iter``; for
            ``blur``: ``sigma`` (see :mod:`roar.data.imputation`).

    Returns:
        A new ``(B, C, H, W)`` tensor; ``images`` is not modified.
    """
    check_granularity(granularity)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    expected = (b, c * h * w) if granularity == "element" else (b, h * w)
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must be {expected} for {granularity} granularity of images {tuple(images.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    # A (B, 1, H, W) pixel mask broadcasts over channels, so a pixel is replaced as a whole.
    mask = mask.view(b, c, h, w) if granularity == "element" else mask.view(b, 1, h, w)
    if isinstance(fill, str) and fill in IMPUTING_FILLS:
        from roar.data.imputation import blur_fill, noisy_linear_impute

        options = dict(fill_options or {})
        if fill == "blur":
            return blur_fill(images, mask, **options)
        return noisy_linear_impute(images, mask, indices=indices, **options)
    return torch.where(mask, _fill_value(images, fill), images)


def mask_images(
    images: torch.Tensor,
    ranks: torch.Tensor,
    threshold: float,
    mode: str = "roar",
    fill: torch.Tensor | Sequence[float] | str | None = None,
    granularity: str = "element",
    *,
    indices: torch.Tensor | None = None,
    fill_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """ROAR/KAR-modify a batch: ``x~ = fill where the feature is replaced, else x``.

    Hooker et al. (NeurIPS 2019) replace the ``round(t * F)`` most important features with the
    training per-channel mean (ROAR) or keep only them (KAR). This runs on the device for every
    batch, before augmentation and normalisation, so it is a few element-wise tensor ops.

    Args:
        images: ``(B, C, H, W)`` images in ``[0, 1]`` pixel space.
        ranks: ``(B, F)`` integer ranks of the same images, 0 = most important.
        threshold: fraction in ``[0, 1)``.
        mode: ``roar`` or ``kar``.
        fill: ``(C,)`` training per-channel mean, or one of :data:`FILLS`. Required.
        granularity: ``element`` or ``pixel``; must match how ``ranks`` were computed.
        indices, fill_options: for the imputing fills, see :func:`apply_mask`.

    Returns:
        The modified batch (a new tensor).
    """
    return apply_mask(images, feature_mask(ranks, threshold, mode), fill, granularity, indices=indices, fill_options=fill_options)


__all__ = [
    "FILLS",
    "GRANULARITIES",
    "IMPUTING_FILLS",
    "MODES",
    "SCORES",
    "apply_mask",
    "attribution_scores",
    "check_granularity",
    "check_mode",
    "check_score",
    "feature_mask",
    "mask_images",
    "num_features",
    "num_masked",
    "ranks_from_scores",
    "tie_break_keys",
]
