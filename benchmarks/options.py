"""What a ``python -m benchmarks.run`` command selects: the figures (``--figures``) and their
configs (``--set FIGURE.FIELD=VALUE``), every value checked before any figure runs.

Each figure's ``Config`` (and the case classes in it) declares the valid range of a numeric
field once, with ``bounded``: ``n: int = bounded(1, default=512)``. ``check`` reads those
declarations, so a value out of range (``--set store.n=-5``) is one error line naming the
setting, the value and what is valid, instead of a figure failing deep inside after the others
have run (the project's rule: bad input refused before any compute).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

FIGURES: dict[str, tuple[int, str]] = {
    "attribution": (1, "benchmarks.attribution_cost"),
    "masked": (2, "benchmarks.masked_training"),
    "overhead": (3, "benchmarks.framework_overhead"),
    "store": (4, "benchmarks.store_memory"),
    "sanity": (5, "benchmarks.sanity_cost"),
    "grid": (6, "benchmarks.grid"),
    "mprt": (7, "benchmarks.sanity_mprt"),
    "road": (8, "benchmarks.road_imputation"),
    "stacked": (9, "benchmarks.stacked_training"),
    "per_run": (10, "benchmarks.run_overhead"),
    "gpu": (11, "benchmarks.gpu_retrain"),
}


# --------------------------------------------------------------------------------------------
# Valid ranges, declared on the config fields
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bound:
    """``low <= value`` (``low < value`` if ``above``) and, if ``below`` is given, ``value < below``."""

    low: float
    above: bool = False
    below: float | None = None
    note: str = ""
    """What the lowest value means, where it is special (``0: the run's --repeats``)."""

    def describe(self, integer: bool) -> str:
        if integer and self.low == 1 and not self.above and self.below is None:
            text = "a positive integer"
        else:
            low = f"{'>' if self.above else '>='} {self.low:g}"
            text = f"{'an integer' if integer else 'a number'} {low}" + (f" and < {self.below:g}" if self.below is not None else "")
        return text + (f" ({self.note})" if self.note else "")

    def holds(self, value: float) -> bool:
        return (value > self.low if self.above else value >= self.low) and (self.below is None or value < self.below)


REPEATS_NOTE = "0: the run's --repeats"


def bounded(low: float, *, above: bool = False, below: float | None = None, note: str = "", default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value must lie in the range (see ``Bound``); ``check`` enforces it."""
    return dataclasses.field(default=default, metadata={"bound": Bound(low, above, below, note)})


def check(name: str, cfg: Any, fields: list[str] | None = None) -> None:
    """Raise ``ValueError`` naming ``name.field``, the value and the valid range, for the first
    bounded field of ``cfg`` (or of a case in a tuple field) that is out of its range."""
    for field in dataclasses.fields(cfg):
        if fields is not None and field.name not in fields:
            continue
        value, bound = getattr(cfg, field.name), field.metadata.get("bound")
        if bound is not None and not bound.holds(value):
            raise ValueError(f"{name}.{field.name} must be {bound.describe(isinstance(value, int))}, got {value!r}")
        if isinstance(value, tuple):
            for case in value:
                if dataclasses.is_dataclass(case):
                    try:
                        check(name, case)
                    except ValueError as err:  # "stacked.members" would name a setting that does not exist
                        raise ValueError(str(err).replace(f"{name}.", f"{name}.{field.name} ", 1)) from None


# --------------------------------------------------------------------------------------------
# --figures and --set
# --------------------------------------------------------------------------------------------


def _choices() -> str:
    return ", ".join(f"{n} ({name})" for name, (n, _) in FIGURES.items())


def parse_figures(text: str) -> list[str]:
    """``1,4`` or ``attribution,store`` (or ``all``, in figure order) -> figure names, run in the order
    given: put the one that matters most first, so a run cut short (a GPU lease's time limit) has it."""
    if text.strip() == "all":
        return list(FIGURES)
    by_number = {str(number): name for name, (number, _) in FIGURES.items()}
    names = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name = by_number.get(part, part)
        if name not in FIGURES:
            raise ValueError(f"unknown figure {part!r}; valid figures: all, {_choices()}")
        names.append(name)
    if not names:  # `--figures ""` would otherwise run nothing, write an empty results file and exit 0
        raise ValueError(f"--figures {text!r} names no figure; valid figures: all, {_choices()}")
    return list(dict.fromkeys(names))


CASES = {  # settings that take cases, arch:size:...[,...] -> the case class and the sizes after arch
    "attribution.models": ("benchmarks.attribution_cost", "ModelCase", "image_size:batch_size"),
    "stacked.cases": ("benchmarks.stacked_training", "Case", "in_chans:image_size:batch_size:members"),
}


def _cases(key: str, value: str) -> tuple:
    module, name, sizes = CASES[key]
    case, form = getattr(importlib.import_module(module), name), f"arch:{sizes}"
    cases = []
    for item in value.split(","):
        parts = item.split(":")
        if len(parts) != form.count(":") + 1 or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"{key} takes {form}[,...] (integer sizes), got {item!r}")
        cases.append(case(parts[0], *(int(p) for p in parts[1:])))
    return tuple(cases)


def _convert(field: dataclasses.Field, current: Any, value: str) -> Any:
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{field.name} takes true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if isinstance(current, (int, float)):
        kind = type(current)
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{field.name} takes {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if isinstance(current, tuple) and all(isinstance(v, str) for v in current):
        return tuple(filter(None, value.split(",")))
    if isinstance(current, str):
        return value
    raise ValueError(f"{field.name} cannot be set from the command line")


def figure_config(name: str, preset: str, overrides: list[str]) -> Any:
    """The figure's preset config with ``--set name.field=value`` overrides applied, each checked
    against its field's declared range."""
    module = importlib.import_module(FIGURES[name][1])
    cfg = module.PRESETS[preset]
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in overrides:
        key, sep, value = item.partition("=")
        figure, dot, field = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set takes figure.field=value, got {item!r}")
        if figure not in FIGURES:
            raise ValueError(f"--set {item!r}: unknown figure {figure!r}; valid figures: {', '.join(FIGURES)}")
        if figure != name:
            continue
        if field not in fields:
            raise ValueError(f"--set {item!r}: {name} has no setting {field!r}; valid settings: {', '.join(fields)}")
        try:
            new = _cases(key, value) if key in CASES else _convert(fields[field], getattr(cfg, field), value)
            cfg = dataclasses.replace(cfg, **{field: new})
            check(name, cfg, [field])
        except ValueError as err:  # int('abc') says neither the setting nor the figure
            raise ValueError(f"--set {item!r}: {err}") from None
    return cfg
