"""The grid of a ROAR/KAR benchmark: one :class:`RunSpec` per cell, method x threshold x seed x mode.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019).
A ROAR run at threshold ``t`` replaces the ``round(t * F)`` most important features (by a method's
ranking) with an uninformative value and retrains from scratch; a KAR run keeps those features and
replaces all the others, so for KAR a larger ``t`` keeps more. ``noretrain`` evaluates the base
model on the ROAR-masked test set without retraining (the paper's Figure 3 shows why that is
confounded by distribution shift; it is reported for comparison); ``noretrain_kar`` does the same
on the KAR-masked test set, planned when ``kar`` is among the modes. With ``fill: noisy_linear`` the
two are ROAD's MoRF and LeRF curves (Rong, Leemann et al., ICML 2022: most / least relevant first).

The unmasked reference does not depend on any method, so it is run once and shared:

* ``RunSpec(method="unmasked", mode="reference", threshold=0.0, seed=s)`` for every seed: a retrain
  on unmasked data, placed by the report on every ROAR curve at fraction removed 0 and on every
  KAR curve at fraction kept 1;
* ``RunSpec(method="unmasked", mode="noretrain", threshold=0.0, seed=0)``: the base model on the
  unmasked test set, placed at 0 on every noretrain curve and at fraction kept 1 on every
  noretrain_kar curve.

This module is cheap to import (no torch): the report and the command line use it too.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("roar", "kar", "noretrain", "noretrain_kar")
RETRAIN_MODES = ("roar", "kar")
NORETRAIN_ORDER = {"noretrain": "roar", "noretrain_kar": "kar"}
"""The masking order of each no-retrain mode (ROAD's MoRF and LeRF with the noisy linear fill)."""
REFERENCE_MODE = "reference"
REFERENCE_METHOD = "unmasked"
SPEC_MODES = (*MODES, REFERENCE_MODE)
DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SEEDS = 5


def format_threshold(threshold: float) -> str:
    """The threshold as it appears in a run id: three decimals (``0.500``), more only where needed.

    Three fixed decimals keep ids aligned and stable across float spellings (``0.5`` and ``0.50``
    name the same run); a threshold with more precision (``0.0625``) keeps its digits so that two
    different thresholds never share an id.
    """
    fixed = f"{threshold:.3f}"
    return fixed if float(fixed) == float(threshold) else f"{threshold:.6g}"


def _check_name(kind: str, value: object) -> str:
    # '/' separates the parts of a run id (and run folders); an empty part would make ids ambiguous
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ValueError(f"{kind} must be a non-empty string without '/' or surrounding spaces, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the benchmark grid.

    Attributes:
        dataset: the dataset source name (e.g. ``digits``).
        model: the model architecture (e.g. ``small_cnn``).
        method: an attribution method's registry key, or ``unmasked`` for the shared reference.
        mode: ``roar``, ``kar``, ``noretrain``, or ``reference`` (the unmasked retrain).
        threshold: fraction of features removed (roar, noretrain) or kept (kar); 0 for references.
        seed: the retraining seed (0 for noretrain, whose base model is fixed).
    """

    dataset: str
    model: str
    method: str
    mode: str
    threshold: float
    seed: int

    def __post_init__(self) -> None:
        _check_name("dataset", self.dataset)
        _check_name("model", self.model)
        _check_name("method", self.method)
        if self.mode not in SPEC_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid modes: {', '.join(SPEC_MODES)}")
        if not isinstance(self.threshold, numbers.Real) or isinstance(self.threshold, bool) or not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold!r} must be a number in [0, 1]")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed {self.seed!r} must be a non-negative integer")
        # normalise numpy scalars and ints so that equal specs hash, compare and serialise alike
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def is_reference(self) -> bool:
        """True for the shared unmasked runs (the retrained reference and the noretrain one)."""
        return self.method == REFERENCE_METHOD

    @property
    def run_id(self) -> str:
        """Stable unique id, e.g. ``roar/integrated_gradients_sg_sq/t0.500/s3/digits/small_cnn``."""
        return f"{self.mode}/{self.method}/t{format_threshold(self.threshold)}/s{self.seed}/{self.dataset}/{self.model}"

    @property
    def name(self) -> str:
        """Short human name for loggers, e.g. ``gradient-t0.5-s3``."""
        return f"{self.method}-t{self.threshold:g}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """The spec of a result row (extra keys such as ``test_acc`` are ignored)."""
        missing = [k for k in ("dataset", "model", "method", "mode", "threshold", "seed") if k not in data]
        if missing:
            raise ValueError(f"a run spec needs {', '.join(missing)}; got keys {sorted(data)}")
        return cls(data["dataset"], data["model"], data["method"], data["mode"], float(data["threshold"]), int(data["seed"]))


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


def _check_modes(modes: Sequence[str]) -> list[str]:
    if isinstance(modes, str):
        modes = [modes]
    modes = list(modes)
    if not modes:
        raise ValueError(f"modes is empty; valid modes: {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            hint = " (the reference runs are added automatically)" if mode == REFERENCE_MODE else ""
            raise ValueError(f"unknown mode {mode!r}{hint}; valid modes: {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes must be unique, got {modes}")
    return modes


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
) -> list[RunSpec]:
    """Every run of a benchmark, in the order worth running them.

    The order makes an interrupted grid as useful as possible:

    1. the unmasked reference retrain of every seed (when a retrain mode is asked for): every
       curve starts there;
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
        modes: among :data:`MODES`; ``noretrain`` here is the same as ``noretrain=True``.
        noretrain: add the no-retrain evaluations of the base model: ROAR masking (``noretrain``)
            always, and KAR masking (``noretrain_kar``) too when ``kar`` is among the modes.

    Returns:
        The run specs, without duplicates.

    Raises:
        ValueError: a bad threshold, method, mode or seed, named with the valid choices.
    """
    _check_name("dataset", dataset)
    _check_name("model", model)
    methods = _check_methods(methods)
    thresholds = _check_thresholds(thresholds)
    modes = _check_modes(modes)
    seeds = _check_seeds(seeds)
    retrain_modes = [m for m in modes if m in RETRAIN_MODES]
    with_noretrain = bool(noretrain) or "noretrain" in modes
    # KAR order without retraining (ROAD's LeRF) comes with KAR; run ids of the ROAR order are unchanged.
    with_noretrain_kar = "noretrain_kar" in modes or (bool(noretrain) and "kar" in modes)

    plan: list[RunSpec] = []
    if retrain_modes:
        plan += [RunSpec(dataset, model, REFERENCE_METHOD, REFERENCE_MODE, 0.0, seed) for seed in seeds]
    if with_noretrain:
        plan.append(RunSpec(dataset, model, REFERENCE_METHOD, "noretrain", 0.0, 0))
        plan += [RunSpec(dataset, model, method, "noretrain", t, 0) for t in thresholds for method in methods]
    if with_noretrain_kar:
        if not with_noretrain:  # its curve starts from the same unmasked evaluation of the base model
            plan.append(RunSpec(dataset, model, REFERENCE_METHOD, "noretrain", 0.0, 0))
        plan += [RunSpec(dataset, model, method, "noretrain_kar", t, 0) for t in thresholds for method in methods]
    for seed in seeds:
        for mode in retrain_modes:
            plan += [RunSpec(dataset, model, method, mode, t, seed) for t in thresholds for method in methods]
    return plan
