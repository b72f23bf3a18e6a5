"""Randomisation and comparison details the sanity-check papers and libraries differ on.

Each is a setting, recorded in every ``sanity.csv`` row, because results move with them:

- ``batchnorm``: what re-initialising a batch-norm layer does to its running statistics.
  ``reset`` (default) calls ``reset_parameters()``, which also resets the running mean and
  variance to 0 and 1, as the project always did and as Quantus does. ``keep_stats`` re-initialises
  the trainable scale and shift only and keeps the trained running statistics, as Adebayo et al.'s
  code does (it re-initialises TensorFlow's *trainable* variables only).
- ``normalization``: how a map is scaled before SSIM and HOG. ``minmax`` (default): per image to
  ``[0, 1]``. ``percentile``: Adebayo et al.'s ``abs_grayscale_norm``: clip at the 99th percentile
  of the (absolute, channel-reduced) map, then divide by it, so a few extreme pixels do not
  squash the rest.
- ``reduction``: how an absolute map loses its channels, for ``spearman_abs``, SSIM and HOG.
  ``sum_abs`` (default): the sum of ``|a|`` over channels (Adebayo et al.). ``abs_sum``:
  ``|sum a|``, the absolute value of the signed channel sum.

Bad values fail at construction, naming the value and the choices, before anything is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BATCHNORM_MODES = ("reset", "keep_stats")
NORMALIZATIONS = ("minmax", "percentile")
REDUCTIONS = ("sum_abs", "abs_sum")

PERCENTILE = 99.0
"""The clipping percentile of Adebayo et al.'s ``abs_grayscale_norm``."""


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class SanitySettings:
    """The protocol details of one sanity check (see the module docstring).

    Attributes:
        batchnorm: ``reset`` (default) or ``keep_stats``.
        normalization: ``minmax`` (default) or ``percentile``.
        reduction: ``sum_abs`` (default) or ``abs_sum``.
    """

    batchnorm: str = "reset"
    normalization: str = "minmax"
    reduction: str = "sum_abs"

    def __post_init__(self) -> None:
        check_choice("batchnorm", self.batchnorm, BATCHNORM_MODES)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("reduction", self.reduction, REDUCTIONS)

    def row(self) -> dict[str, str]:
        """The columns every ``sanity.csv`` row carries."""
        return asdict(self)

    @property
    def map_options(self) -> dict[str, str]:
        """The keyword arguments of the built-in similarity metrics."""
        return {"normalization": self.normalization, "reduction": self.reduction}


SETTING_COLUMNS = tuple(SanitySettings().row())


def as_settings(value: SanitySettings | dict[str, Any] | None) -> SanitySettings:
    """A :class:`SanitySettings` from itself, a mapping of its fields, or ``None`` (the defaults)."""
    if value is None:
        return SanitySettings()
    if isinstance(value, SanitySettings):
        return value
    unknown = sorted(set(value) - set(SETTING_COLUMNS))
    if unknown:
        raise ValueError(f"unknown sanity setting(s) {', '.join(map(repr, unknown))}; valid settings: {', '.join(SETTING_COLUMNS)}")
    return SanitySettings(**value)
