"""One run of a ROAR/KAR benchmark: :class:`RunSpec`, its modes, its fill and its stable run id.

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

This module is cheap to import (no torch): the report, the results store and the command line use it.
:mod:`roar.benchmark.plan` builds a grid of these specs from a benchmark's settings and re-exports
every name here, so ``from roar.benchmark.plan import RunSpec`` keeps working.
"""

from __future__ import annotations

import json
import numbers
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
        """Short human name for loggers, e.g. ``roar-gradient-t0.5-s3`` (``kar@blur-gradient-t0.5-s3``).

        It leads with the evaluation: a grid's ROAR and KAR runs of one cell share one W&B group,
        and without it a dashboard listed two runs of the same name."""
        return f"{self.evaluation}-{self.method}-t{self.threshold:g}-s{self.seed}"

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
    return entry_label(mode, fill, DEFAULT_FILL)


def entry_label(mode: str, fill: str, default_fill: str = DEFAULT_FILL) -> str:
    """How the report names one (mode, fill) beside the grid's default fill (``protocol.fill``):
    ``roar`` under the default fill, else ``roar@fill``, ``roar@channel_mean`` included.

    :func:`evaluation_label` names fills relative to the paper's (``roar`` is
    channel_mean): under ``protocol.fill blur`` a ``roar@channel_mean`` entry would have shared the
    blur curve's ``roar.png``, its table column and its paths key, one overwriting the other.
    """
    return mode if fill == default_fill else f"{mode}{FILL_SEPARATOR}{fill}"


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
