"""The grid of a ROAR/KAR benchmark: one :class:`RunSpec` per cell, method x threshold x seed x mode.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019).
A ROAR run at threshold ``t`` replaces the ``round(t * F)`` most important features (by a method's
ranking) with an uninformative value and retrains from scratch; a KAR run keeps those features and
replaces all the others, so for KAR a larger ``t`` keeps more. ``noretrain`` evaluates the base
model on the ROAR-masked test set without retraining (the paper's Figure 3 shows why that is
confounded by distribution shift; it is reported for comparison); ``noretrain_kar`` does the same
on the KAR-masked test set, planned when ``kar`` is among the modes. With ``fill: noisy_linear`` the
two are ROAD's MoRF and LeRF curves (Rong, Leemann et al., ICML 2022: most / least relevant first).

Every masked run has a fill (how removed features are replaced). A mode entry ``mode@fill``
(``noretrain@noisy_linear``) runs that mode under that fill; a plain ``mode`` runs under the grid's
default fill (``protocol.fill``). So ROAR with the paper's fill and ROAD sit in one grid, one store
and one report. The run id names the fill only when it is not the paper's ``channel_mean``
(``noretrain@noisy_linear/gradient/t0.500/s0/digits/small_cnn``), so ids of earlier grids hold.

The unmasked reference does not depend on any method or fill, so it is run once and shared
(its spec's fill is always :data:`DEFAULT_FILL`):

* ``RunSpec(method="unmasked", mode="reference", threshold=0.0, seed=s)`` for every seed: a retrain
  on unmasked data, placed by the report on every ROAR curve at fraction removed 0 and on every
  KAR curve at fraction kept 1;
* ``RunSpec(method="unmasked", mode="noretrain", threshold=0.0, seed=0)``: the base model on the
  unmasked test set, placed at 0 on every noretrain curve and at fraction kept 1 on every
  noretrain_kar curve.

This module is cheap to import (no torch): the report and the command line use it too.
"""

from __future__ import annotations

import json
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
DEFAULT_FILL = "channel_mean"
"""The paper's fill (Hooker et al.: the training set's per-channel mean); the only fill run ids leave unnamed."""
FILL_SEPARATOR = "@"
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
        fill: how removed features are replaced (:data:`roar.data.roar.FILLS`); the unmasked
            references replace nothing, so theirs is always :data:`DEFAULT_FILL` (one shared
            reference whatever the fills of the grid).
    """

    dataset: str
    model: str
    method: str
    mode: str
    threshold: float
    seed: int
    fill: str = DEFAULT_FILL

    def __post_init__(self) -> None:
        _check_name("dataset", self.dataset)
        _check_name("model", self.model)
        _check_name("method", self.method)
        _check_name("fill", self.fill)
        if FILL_SEPARATOR in self.fill:
            raise ValueError(f"fill {self.fill!r} must not contain {FILL_SEPARATOR!r}")
        if self.mode not in SPEC_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid modes: {', '.join(SPEC_MODES)}")
        if self.method == REFERENCE_METHOD:  # nothing is removed: the same run whatever the grid's fills
            object.__setattr__(self, "fill", DEFAULT_FILL)
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
    def evaluation(self) -> str:
        """The mode as a modes entry names it: ``roar``, or ``noretrain@noisy_linear`` under another fill than the paper's."""
        return evaluation_label(self.mode, self.fill)

    @property
    def run_id(self) -> str:
        """Stable unique id, e.g. ``roar/integrated_gradients_sg_sq/t0.500/s3/digits/small_cnn``
        (``noretrain@noisy_linear/...`` under a fill other than ``channel_mean``)."""
        return f"{self.evaluation}/{self.method}/t{format_threshold(self.threshold)}/s{self.seed}/{self.dataset}/{self.model}"

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
        fill = data.get("fill") or DEFAULT_FILL  # rows of roar 0.3.0 name no fill: theirs is read from their config (recorded_fill)
        return cls(data["dataset"], data["model"], data["method"], data["mode"], float(data["threshold"]), int(data["seed"]), str(fill))


def evaluation_label(mode: str, fill: str) -> str:
    """``mode``, or ``mode@fill`` when the fill is not the paper's: how modes entries, run ids and progress lines name it."""
    return mode if fill == DEFAULT_FILL else f"{mode}{FILL_SEPARATOR}{fill}"


def recorded_fill(row: dict[str, Any], default: str = DEFAULT_FILL) -> str:
    """The fill a result row was run with: its own ``fill``, else its config's (the spec's ``fill``, then the
    protocol's: rows of roar 0.3.0 ran under ``protocol.fill``), else ``default``."""
    if row.get("fill"):
        return str(row["fill"])
    config = row.get("config")
    if isinstance(config, str) and config:
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if isinstance(config, dict):
        if config.get("fill"):
            return str(config["fill"])
        for holder in (config, config.get("benchmark")):
            protocol = holder.get("protocol") if isinstance(holder, dict) else None
            if isinstance(protocol, dict) and protocol.get("fill"):
                return str(protocol["fill"])
    return default


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
            raise ValueError(f"unknown mode {mode!r}{where}{hint}; valid modes: {', '.join(MODES)}")
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
