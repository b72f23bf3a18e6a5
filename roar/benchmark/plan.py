"""The grid of a ROAR/KAR benchmark: one :class:`RunSpec` per cell, method x threshold x seed x mode.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019),
retrain a model for every saliency method at each of several thresholds and seeds, under ROAR
(remove the top ``t`` features) and KAR (keep them), and evaluate the base model without
retraining for comparison. This module checks a grid's settings (methods, thresholds, seeds,
``mode`` or ``mode@fill`` entries), naming a bad value and the valid choices before anything
runs, and lists the grid's runs in the order worth running them (:func:`build_plan`), the shared
unmasked references first.

What one run is (its modes, fill, run id and the shared references) lives in
:mod:`roar.benchmark.run_spec`; its names are re-exported here, where the package imports them.

This module is cheap to import (no torch): the report and the command line use it too.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from roar.benchmark.run_spec import (
    DEFAULT_FILL, FILL_SEPARATOR, MODES, NORETRAIN_ORDER, REFERENCE_METHOD, REFERENCE_MODE, RETRAIN_MODES, SPEC_MODES, RunSpec, _check_name,
    _is_int, entry_label, evaluation_label, format_threshold, recorded_fill,
)  # fmt: skip

DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SEEDS = 5


def _check_thresholds(thresholds: Iterable[float]) -> list[float]:
    values = list(thresholds)
    if not values:
        raise ValueError("thresholds is empty; give fractions in (0, 1), e.g. (0.1, 0.3, 0.5, 0.7, 0.9)")
    seen: dict[str, float] = {}
    for t in values:
        if not isinstance(t, numbers.Real) or isinstance(t, bool) or not 0 < t < 1:
            raise ValueError(
                f"threshold {t!r} is not in the open interval (0, 1): 0 is the unmasked reference (always run) "
                "and 1 would mask every feature"
            )
        key = format_threshold(t)
        if key in seen:
            raise ValueError(f"threshold {t!r} repeats {seen[key]!r}; thresholds must be unique")
        seen[key] = t
    return sorted(float(t) for t in values)


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]  # a lone name is a common slip; treat it as a one-method list
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty; name at least one attribution method (e.g. ['random', 'gradient'])")
    for method in methods:
        _check_name("method", method)
        if method == REFERENCE_METHOD:
            raise ValueError(f"method name {REFERENCE_METHOD!r} is reserved for the unmasked reference, which is always run")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"methods must be unique; repeated: {', '.join(duplicates)}")
    return methods


def _valid_fills() -> tuple[str, ...]:
    from roar.data.roar import FILLS  # imported here: this module stays free of torch for the report

    return FILLS


def parse_modes(modes: Sequence[str], default_fill: str = DEFAULT_FILL) -> list[tuple[str, str]]:
    """The ``(mode, fill)`` pairs of a ``modes`` setting: ``mode`` (under ``default_fill``) or ``mode@fill``.

    Raises:
        ValueError: an unknown mode or fill, a reference entry, or a pair named twice, naming the
            value and the valid choices.
    """
    if isinstance(modes, str):
        modes = [modes]
    modes = list(modes)
    if not modes:
        raise ValueError(f"modes is empty; valid modes: {', '.join(MODES)} (each optionally @fill, e.g. noretrain@noisy_linear)")
    pairs: list[tuple[str, str]] = []
    for entry in modes:
        if not isinstance(entry, str):
            raise ValueError(f"modes entry {entry!r} must be a string: a mode ({', '.join(MODES)}), optionally @fill")
        mode, at, fill = entry.partition(FILL_SEPARATOR)
        mode, fill = mode.strip(), (fill.strip() if at else default_fill)
        where = f" in modes entry {entry!r}" if at else ""
        if mode not in MODES:
            hint = " (the reference runs are added automatically, and are the same for every fill)" if mode == REFERENCE_MODE else ""
            fills = f"; valid fills after @: {', '.join(_valid_fills())}" if at else ""  # the whole mode@fill syntax
            what = f"no mode before @ in modes entry {entry!r}" if at and not mode else f"unknown mode {mode!r}{where}{hint}"
            raise ValueError(f"{what}; valid modes: {', '.join(MODES)}{fills}")
        if fill not in _valid_fills():
            raise ValueError(f"unknown fill {fill!r} in modes entry {entry!r}; valid fills: {', '.join(_valid_fills())}")
        if (mode, fill) in pairs:
            raise ValueError(f"modes must be unique, got {modes} ({entry!r} is {evaluation_label(mode, fill)!r} again)")
        pairs.append((mode, fill))
    return pairs


def _check_seeds(seeds: int | Sequence[int]) -> list[int]:
    if _is_int(seeds):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a non-empty list of integers, got {seeds!r}")
        return list(range(int(seeds)))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a positive count or a non-empty list of integers, got {seeds!r}")
    values = list(seeds)
    if not values:
        raise ValueError("seeds is an empty list; give a positive count or a non-empty list of integers")
    for seed in values:
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed {seed!r} must be a non-negative integer; seeds: {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds must be unique, got {values!r}")
    return [int(s) for s in values]


def build_plan(
    dataset: str,
    model: str,
    methods: Sequence[str],
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    modes: Sequence[str] = ("roar",),
    noretrain: bool = True,
    fill: str = DEFAULT_FILL,
) -> list[RunSpec]:
    """Every run of a benchmark, in the order worth running them.

    The order makes an interrupted grid as useful as possible:

    1. the unmasked reference retrain of every seed (when a retrain mode is asked for): every
       curve starts there, whatever its fill;
    2. the ``noretrain`` evaluations (seed 0 only: the base model is fixed, so seeds would repeat
       the same number): cheap, no training;
    3. the retrains, seed-major (every mode, threshold and method of seed 0 before seed 1), and
       within a seed threshold before method, so that a partial seed still compares all methods
       at the same thresholds.

    Args:
        dataset: dataset source name.
        model: model architecture name.
        methods: attribution methods (registry keys); include ``random`` for the baseline.
        thresholds: fractions in (0, 1), unique; the reference supplies 0 (ROAR) and 1 (KAR).
        seeds: a number of seeds (``0..n-1``) or the list of seeds.
        modes: among :data:`MODES`, each optionally ``@fill`` (:func:`parse_modes`);
            ``noretrain`` here is the same as ``noretrain=True``.
        noretrain: add the no-retrain evaluations of the base model under the default fill: ROAR
            masking (``noretrain``) always, and KAR masking (``noretrain_kar``) too when ``kar``
            is among the modes.
        fill: the default fill, of every plain mode entry.

    Returns:
        The run specs, without duplicates.

    Raises:
        ValueError: a bad threshold, method, mode, fill or seed, named with the valid choices.
    """
    _check_name("dataset", dataset)
    _check_name("model", model)
    methods = _check_methods(methods)
    thresholds = _check_thresholds(thresholds)
    pairs = parse_modes(modes, fill)
    seeds = _check_seeds(seeds)
    retrains = [(m, f) for m, f in pairs if m in RETRAIN_MODES]
    evaluations = [(m, f) for m, f in pairs if m in NORETRAIN_ORDER]
    if noretrain:  # the default fill's no-retrain curves, as before fills were a modes setting
        # KAR order without retraining (ROAD's LeRF) comes with KAR; run ids of the ROAR order are unchanged.
        extra = [("noretrain", fill)] + ([("noretrain_kar", fill)] if any(m == "kar" for m, _ in pairs) else [])
        evaluations += [pair for pair in extra if pair not in evaluations]
    evaluations.sort(key=lambda pair: list(NORETRAIN_ORDER).index(pair[0]))  # ROAR order first, as before (a stable sort)

    plan: list[RunSpec] = []
    if retrains:
        plan += [RunSpec(dataset, model, REFERENCE_METHOD, REFERENCE_MODE, 0.0, seed) for seed in seeds]
    if evaluations:  # every no-retrain curve starts from the same unmasked evaluation of the base model
        plan.append(RunSpec(dataset, model, REFERENCE_METHOD, "noretrain", 0.0, 0))
    for mode, mode_fill in evaluations:
        plan += [RunSpec(dataset, model, method, mode, t, 0, mode_fill) for t in thresholds for method in methods]
    for seed in seeds:
        for mode, mode_fill in retrains:
            plan += [RunSpec(dataset, model, method, mode, t, seed, mode_fill) for t in thresholds for method in methods]
    return plan


__all__ = [
    "DEFAULT_FILL", "DEFAULT_SEEDS", "DEFAULT_THRESHOLDS", "FILL_SEPARATOR", "MODES", "NORETRAIN_ORDER", "REFERENCE_METHOD", "REFERENCE_MODE",
    "RETRAIN_MODES", "SPEC_MODES", "RunSpec", "build_plan", "entry_label", "evaluation_label", "format_threshold", "parse_modes", "recorded_fill",
]  # fmt: skip
