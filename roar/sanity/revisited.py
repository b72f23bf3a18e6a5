"""sMPRT and eMPRT: the repaired model-parameter randomisation tests of Hedström et al. (2023).

Hedström, Weber, Bareeva, Motzkus, Samek, Lapuschkin & Höhne, "Sanity Checks Revisited: An
Exploration to Repair the Model Parameter Randomisation Test" (XAI in Action workshop, NeurIPS
2023; Quantus 0.6's ``SmoothMPRT`` and ``EfficientMPRT``) name two shortcomings of the MPRT of
Adebayo et al. (2018) and a repair for each:

- **sMPRT** (smooth MPRT): shattered gradients make a map noisy, and noise alone lowers its
  similarity to the original map. Each explanation is therefore the average of the explanations
  of ``nr_samples`` noisy copies ``x + eps``, ``eps ~ N(0, (noise_magnitude * (max x - min x))^2)``,
  before maps are compared layer by layer as in the MPRT. Here the noise of a sample is seeded
  by (seed, sample index), so every randomised model sees the same noisy copies and only the
  weights differ. (Quantus draws from NumPy's global stream afresh for every model, and makes
  the last of its ``nr_samples`` copies the clean input.)
- **eMPRT** (efficient MPRT): instead of a similarity, compare the *complexity* of the map before
  and after the whole network is randomised: the discrete entropy of the histogram of the map's
  values (``n_bins`` equal-width bins over its range, natural log; the map made absolute first
  with ``absolute``). The score is the relative rise ``(H_random - H_original) / H_original``: a
  method whose maps depend on the learned weights turns noisier (a positive rise); one that
  ignores the model (the ``noise`` control) does not. An original map of zero entropy (a
  constant map) gives NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import entropy as _scipy_entropy
from torch import Tensor

from roar.attribution.ensembles import Ensemble
from roar.attribution.registry import needs_model
from roar.sanity.randomization import ORIGINAL

SMPRT = "smprt"
EMPRT = "emprt"
ENTROPY = "entropy"
COMPLEXITY_RISE = "complexity_rise"
ALL_LAYERS = "all_layers"
"""The ``layer`` of eMPRT's step 1: the fully randomised network."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_bins(n_bins: Any) -> int:
    """eMPRT's ``emprt_bins``: at least 2. A one-bin histogram has entropy 0 for every map, so every
    rise ``(H_random - H_original) / H_original`` is NaN: a run that computes for minutes and reports nothing."""
    n_bins = _positive_int("emprt_bins", n_bins)
    if n_bins < 2:
        raise ValueError(f"emprt_bins must be at least 2, got {n_bins}: one bin gives every map entropy 0, so eMPRT's rise is NaN")
    return n_bins


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Smoothing:
    """sMPRT's noise averaging: ``nr_samples`` noisy copies at ``noise_magnitude`` x the input's range.

    Defaults are Quantus 0.6's ``SmoothMPRT`` defaults (50 samples, 0.1).
    """

    nr_samples: int = 50
    noise_magnitude: float = 0.1

    def __post_init__(self) -> None:
        _positive_int("smprt_samples", self.nr_samples)
        _non_negative("smprt_noise", self.noise_magnitude)

    def wrap(self, built: Mapping[str, Any], method_params: Mapping[str, Mapping[str, Any]] | None, seed: int) -> dict[str, Any]:
        """Every model-based method averaged over the noisy copies (a SmoothGrad-style mean);
        model-free ones (the ``noise`` control) as they are."""
        return {
            name: Ensemble(method, "sg", nt_samples=self.nr_samples, noise_std=self.noise_magnitude, noise_mode="relative", seed=seed)
            if needs_model(name, (method_params or {}).get(name))
            else method
            for name, method in built.items()
        }


def discrete_entropy(maps: Tensor, n_bins: int = 100, absolute: bool = True) -> Tensor:
    """Per map, the entropy of the histogram of its values (Hedström et al. 2023, eMPRT).

    ``numpy.histogram`` with ``n_bins`` equal-width bins over the map's own range, then
    ``scipy.stats.entropy`` of the counts (natural log), as Quantus's ``discrete_entropy``.

    Args:
        maps: ``(B, ...)`` maps.
        n_bins: histogram bins.
        absolute: take ``|a|`` first.

    Returns:
        ``(B,)`` float64 entropies on the CPU.
    """
    n_bins = check_bins(n_bins)
    flat = maps.detach().reshape(maps.shape[0], -1).double().cpu().numpy()
    if absolute:
        flat = np.abs(flat)
    return torch.tensor([float(_scipy_entropy(np.histogram(row, bins=n_bins)[0])) for row in flat], dtype=torch.float64)


def complexity_rise(original: Tensor, randomized: Tensor) -> Tensor:
    """``(H_random - H_original) / H_original`` per image; NaN where ``H_original`` is 0."""
    return torch.where(original > 0, (randomized - original) / torch.where(original > 0, original, 1.0), torch.nan)


def efficient_records(
    reference: Mapping[str, Tensor], randomized: Mapping[str, Tensor], n_bins: int, absolute: bool, settings: Any
) -> list[Any]:
    """eMPRT's rows: the entropy of the original (step 0) and fully randomised (step 1) maps, and the rise."""
    from roar.sanity.maps import SimilarityRecord

    records = []
    for name in reference:
        before = discrete_entropy(reference[name], n_bins, absolute)
        after = discrete_entropy(randomized[name], n_bins, absolute)
        records += [
            SimilarityRecord(name, EMPRT, 0, ORIGINAL, ENTROPY, before.float(), settings),
            SimilarityRecord(name, EMPRT, 1, ALL_LAYERS, ENTROPY, after.float(), settings),
            SimilarityRecord(name, EMPRT, 1, ALL_LAYERS, COMPLEXITY_RISE, complexity_rise(before, after).float(), settings),
        ]
    return records


def efficient_mprt(
    model: torch.nn.Module,
    images: Tensor,
    methods: Sequence[str],
    *,
    n_bins: int = 100,
    absolute: bool = True,
    target: Tensor | None = None,
    indices: Tensor | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    settings: Any = None,
):
    """eMPRT (Hedström et al. 2023): map complexity before and after randomising every layer.

    Only two models are explained: a copy of the trained network, and the same copy once every
    layer group is re-initialised (the last step of the cascading order; a group's fresh weights
    do not depend on the order). Check ``emprt``: metric ``entropy`` at steps 0 and 1 and the
    relative rise, metric ``complexity_rise``, at step 1.

    Args:
        model, images, methods, target, indices, method_params, seed, settings: as in
            :func:`~roar.sanity.maps.model_randomization`.
        n_bins: histogram bins of :func:`discrete_entropy`.
        absolute: histogram of ``|a|`` (default) or of the signed map.

    Returns:
        A :class:`~roar.sanity.maps.CheckResult` with check ``emprt``.
    """
    from roar.attribution import resolve_target
    from roar.sanity.maps import CheckResult, build_methods, check_methods, explain, explained_network
    from roar.sanity.randomization import randomization_steps
    from roar.sanity.settings import as_settings

    methods = check_methods(methods, method_params)
    n_bins = check_bins(n_bins)
    settings = as_settings(settings)
    with torch.inference_mode(False), torch.enable_grad():
        images = images.clone() if images.is_inference() else images
        steps = randomization_steps(explained_network(model), "cascading", seed, include_original=True, batchnorm=settings.batchnorm)
        original = next(steps)
        built = build_methods(original.model, methods, method_params, seed)
        target = resolve_target(original.model, images) if target is None else target
        reference = explain(built, images, target, indices)
        for _ in steps:  # re-initialise every group of the same copy; nothing to explain on the way
            pass
        randomized = explain(built, images, target, indices)
    records = efficient_records(reference, randomized, n_bins, absolute, settings)
    return CheckResult(EMPRT, [ORIGINAL, ALL_LAYERS], records, target.detach().cpu())


def print_emprt_table(console: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """A rich table of eMPRT per method: the entropies before and after, and the rise (nothing without eMPRT rows)."""
    from rich.table import Table

    chosen = {(r["method"], r["step"], r["metric"]): r for r in rows if r["check"] == EMPRT}
    if not chosen:
        return
    table = Table(title="eMPRT: map entropy before and after randomising every layer (Hedström et al. 2023)")
    for column in ("method", "entropy, trained", "entropy, random", "complexity rise"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method in dict.fromkeys(m for m, _, _ in chosen):
        cells = [chosen[method, 0, ENTROPY], chosen[method, 1, ENTROPY], chosen[method, 1, COMPLEXITY_RISE]]
        table.add_row(method, *(f"{r['mean']:+.3f} ± {r['std']:.3f}" for r in cells))
    console.print(table)
    images = max(r["n"] for r in chosen.values())
    # The control is named only when this run has it (sanity.control false leaves it out).
    against = "the noise control's (about 0)" if any(m == "noise" for m, _, _ in chosen) else "0 (this run has no noise control)"
    console.print(f"(mean ± std over {images} images; a rise above {against} means the maps depend on the learned weights)")


__all__ = ["ALL_LAYERS", "COMPLEXITY_RISE", "EMPRT", "ENTROPY", "SMPRT", "Smoothing", "complexity_rise", "discrete_entropy", "efficient_mprt", "print_emprt_table"]
