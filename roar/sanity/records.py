"""What a sanity check produces: per-image similarities of one (method, check, step, metric), and a check's result.

One :class:`SimilarityRecord` is one row of ``sanity.csv`` (Adebayo et al., NeurIPS 2018: a
similarity per randomisation step, method and metric).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from roar.sanity.settings import SanitySettings, as_settings


@dataclass(frozen=True)
class SimilarityRecord:
    """The per-image similarities of one (method, check, step, metric).

    Attributes:
        method: attribution method name.
        check: a randomisation order or ``data`` (see :data:`CHECKS`).
        step: 0 for the unrandomised copy, then 1, 2, ... (1 for the data check).
        layer: the layer randomised at this step, ``original`` at step 0, ``permuted_labels``
            for the data check.
        metric: similarity metric name.
        values: ``(B,)`` similarities, one per image, on the CPU.
        settings: the protocol details (:class:`~roar.sanity.settings.SanitySettings`).
    """

    method: str
    check: str
    step: int
    layer: str
    metric: str
    values: Tensor = field(repr=False)
    settings: SanitySettings = field(default_factory=SanitySettings)

    @property
    def n(self) -> int:
        return int(self.values.numel())

    @property
    def mean(self) -> float:
        return float(self.values.double().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation over images (0 for a single image)."""
        return float(self.values.double().std()) if self.n > 1 else 0.0

    def row(self) -> dict[str, Any]:
        """One ``sanity.csv`` row: method, check, step, layer, metric, mean, std, n, then the settings."""
        return {
            "method": self.method,
            "check": self.check,
            "step": self.step,
            "layer": self.layer,
            "metric": self.metric,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            **self.settings.row(),
        }


@dataclass
class CheckResult:
    """What one check produced.

    Attributes:
        check: a randomisation order or ``data``.
        layers: the ``layer`` of each step, in step order (``original`` first for the orders).
        records: one :class:`SimilarityRecord` per (step, method, metric).
        target: the classes explained, ``(B,)``.
        maps: with ``keep_maps``, ``{method: [maps of each step on the CPU]}``; step 0 of a
            randomisation order is the trained model's reference map, for the data check the
            trained model's then the permuted-label model's maps.
    """

    check: str
    layers: list[str]
    records: list[SimilarityRecord]
    target: Tensor
    maps: dict[str, list[Tensor]] | None = None

    def final(self) -> dict[tuple[str, str], float]:
        """``{(method, metric): mean}`` at the last step (after full randomisation, for cascading)."""
        last = max(r.step for r in self.records)
        return {(r.method, r.metric): r.mean for r in self.records if r.step == last}


def _records(
    check: str, step: int, layer: str, sims: Mapping[str, Mapping[str, Tensor]], settings: SanitySettings | None = None
) -> list[SimilarityRecord]:
    settings = as_settings(settings)
    return [
        SimilarityRecord(method, check, step, layer, metric, values.detach().float().cpu(), settings)
        for method, by_metric in sims.items()
        for metric, values in by_metric.items()
    ]
