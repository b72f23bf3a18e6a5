"""Attributions -> scores -> ranks, the first half of ROAR/KAR: which features matter most.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019)
rank every feature of every image by a saliency method's attribution before any masking. The
contract (see DESIGN.md, "Ranks"):

* a *feature* is one channel value (``granularity="element"``, as the original ROAR code does) or
  one pixel with all its channels (``granularity="pixel"``, ranked by the channel-summed score);
* the ranked score is ``abs`` (default), ``square`` or ``raw`` (signed) attribution;
* rank 0 is the most important feature; ties are broken by a seeded hash of
  ``(seed, sample index, feature)`` (splitmix64, :func:`tie_break_keys`), never by position, so
  the order of equal scores does not depend on the batch a sample arrives in.

What a threshold then does with the ranks is :mod:`roar.data.masking`, which re-exports these names.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch

GRANULARITIES = ("element", "pixel")
SCORES = ("abs", "square", "raw")

_MASK64 = (1 << 64) - 1
# splitmix64 constants (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
# OOPSLA 2014); the second increment is another odd 64-bit constant so rows and features use
# different strides through the hash.
_GAMMA_INDEX = 0x9E3779B97F4A7C15
_GAMMA_FEATURE = 0xD1B54A32D192ED03
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _check_choice(kind: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown {kind} {value!r}{hint}; valid choices: {', '.join(choices)}")
    return value


def check_granularity(granularity: str) -> str:
    """Return ``granularity`` if it is one of :data:`GRANULARITIES`, else raise ValueError."""
    return _check_choice("granularity", granularity, GRANULARITIES)


def check_score(score: str) -> str:
    """Return ``score`` if it is one of :data:`SCORES`, else raise ValueError."""
    return _check_choice("score", score, SCORES)


def num_features(shape: Sequence[int], granularity: str = "element") -> int:
    """Number of ranked features of one ``(C, H, W)`` image at this granularity."""
    check_granularity(granularity)
    if len(shape) != 3:
        raise ValueError(f"an image shape must be (C, H, W), got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    return c * h * w if granularity == "element" else h * w


def attribution_scores(attributions: torch.Tensor, score: str = "abs", granularity: str = "element") -> torch.Tensor:
    """Turn attribution maps into one importance score per feature.

    Args:
        attributions: ``(B, C, H, W)`` attribution maps.
        score: ``abs`` (magnitude; ranks like the squared maps of the ROAR code), ``square`` or
            ``raw`` (signed: large positive evidence first, negative last).
        granularity: ``element`` scores each channel value; ``pixel`` applies the score to each
            value and sums over channels.

    Returns:
        ``(B, F)`` scores with ``F = C*H*W`` (element) or ``H*W`` (pixel).
    """
    check_score(score)
    check_granularity(granularity)
    if attributions.ndim != 4:
        raise ValueError(f"attributions must be (B, C, H, W), got shape {tuple(attributions.shape)}")
    if not attributions.is_floating_point():
        raise ValueError(f"attributions must be floating point, got dtype {attributions.dtype}")
    # Half precision loses ties and overflows when squaring and summing; rank in float32 at least.
    a = attributions if attributions.dtype in (torch.float32, torch.float64) else attributions.float()
    if score == "abs":
        s = a.abs()
    elif score == "square":
        s = a.square()
    else:
        s = a
    if granularity == "pixel":
        s = s.sum(dim=1)
    return s.flatten(1)


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; splitmix64 needs the logical shift of the unsigned bits.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _signed(_MIX1)
    x = (x ^ _shr(x, 27)) * _signed(_MIX2)
    return x ^ _shr(x, 31)


def tie_break_keys(indices: torch.Tensor, num_features: int, seed: int) -> torch.Tensor:
    """Seeded pseudo-random keys used to order features with equal scores.

    A counter-based hash (splitmix64 mixing) of ``(seed, sample index, feature)``: a sample's keys
    depend only on its own index and the seed, never on the batch it is in or its position there,
    so attributions computed in any batching give the same ranks.

    Args:
        indices: ``(B,)`` integer sample indices.
        num_features: ``F``, the number of features per sample.
        seed: the tie-breaking seed.

    Returns:
        ``(B, F)`` int64 keys on ``indices``' device.
    """
    if indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be a 1-D integer tensor, got dtype {indices.dtype} and shape {tuple(indices.shape)}")
    if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    device = indices.device
    seed_state = torch.tensor(_signed(int(seed) + _GAMMA_INDEX), dtype=torch.int64, device=device)
    row = _mix64(_mix64(seed_state) + indices.to(torch.int64) * _signed(_GAMMA_INDEX))
    features = torch.arange(int(num_features), dtype=torch.int64, device=device)
    return _mix64(row.unsqueeze(1) + features * _signed(_GAMMA_FEATURE))


def ranks_from_scores(scores: torch.Tensor, indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank features by score, 0 = highest, ties broken by :func:`tie_break_keys`.

    Args:
        scores: ``(B, F)`` finite scores (from :func:`attribution_scores`).
        indices: ``(B,)`` sample indices, used only to break ties.
        seed: tie-breaking seed.

    Returns:
        ``(B, F)`` int64 ranks; each row is a permutation of ``0..F-1``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (B, F), got shape {tuple(scores.shape)}")
    if indices.shape != scores.shape[:1]:
        raise ValueError(f"indices must be ({scores.shape[0]},) to match the scores, got shape {tuple(indices.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values; cannot rank them")
    b, f = scores.shape
    # Shuffle by the seeded keys first; the stable descending sort by score then keeps that random
    # order among equal scores, so ties never fall back to feature position.
    shuffle = torch.argsort(tie_break_keys(indices, f, seed), dim=1, stable=True)
    by_score = torch.sort(scores.gather(1, shuffle), dim=1, descending=True, stable=True).indices
    order = shuffle.gather(1, by_score)  # order[b, r] = the feature of rank r
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(f, device=scores.device).expand(b, f))
