"""One registry type for everything a config names: methods, models, sources, metrics, launchers.

Modelled on timm's ``@register_model`` / ``create_model``: the built-ins register themselves
with the same decorator a user's code uses, so a user's entry is a first-class citizen, and
every lookup fails with the same message::

    unknown attribution method 'gradiant' (did you mean gradient?); valid: gradient, ...

A registry may name an entry-point group (``roar.methods``): an installed package that declares
``[project.entry-points."roar.methods"] my_method = "mypkg.saliency:MyMethod"`` is found by
name without the user importing it (the entry point is loaded, and so registered, on first use).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """Names -> objects, with a decorator to add to it and one error message for a miss.

    Args:
        kind: what the entries are, for messages ("attribution method", "model").
        entry_point_group: the ``importlib.metadata`` entry-point group searched for names not
            registered yet (None: no plugins).
        adapt: turns what an entry point loads into an entry (e.g. a function into a method
            factory) when loading it did not register it already.
        ordered: list names in registration order (e.g. metrics in the order a paper reports
            them) instead of sorted.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, adapt: Callable[[Any], T] | None = None, ordered: bool = False) -> None:
        self.kind = kind
        self.ordered = ordered
        self.entry_point_group = entry_point_group
        self.adapt = adapt
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ adding
    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        """A decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``.

        Without a name, the object's ``__name__`` is used. Registering a taken name is an error
        unless ``override`` (so two plugins cannot silently shadow each other).
        """

        def decorate(obj: T) -> T:
            self.add(name or getattr(obj, "__name__"), obj, override=override)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, override: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not override and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r}); pass override=True to replace it")
        self._entries[name] = obj

    # ------------------------------------------------------------------ looking up
    def get(self, name: str) -> T:
        """The entry registered as ``name``; plugins are searched before giving up."""
        if name not in self._entries:
            self._load_plugin(name)
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name not in self._entries:
            self._load_plugin(name)
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]

    def names(self) -> list[str]:
        """Every registered name, plugins included, sorted (or in registration order)."""
        self._load_all_plugins()
        return list(self._entries) if self.ordered else sorted(self._entries)

    def unknown(self, name: Any, extra: str = "") -> str:
        """The one message for a name that is not registered: close matches, then every choice."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(names)}{extra}"

    # ------------------------------------------------------------------ plugins
    def _entry_points(self) -> list[metadata.EntryPoint]:
        if self.entry_point_group is None:
            return []
        return list(metadata.entry_points(group=self.entry_point_group))

    def _load(self, entry_point: metadata.EntryPoint) -> None:
        try:
            obj = entry_point.load()
        except Exception as err:  # a broken plugin must say which one, not break every lookup
            raise ValueError(f"the {self.kind} plugin {entry_point.name!r} ({entry_point.value}) does not load: {err}") from err
        # Loading usually registers it (the decorator ran on import); a bare object is added by its entry-point name.
        if entry_point.name not in self._entries:
            self.add(entry_point.name, self.adapt(obj) if self.adapt else obj)

    def _load_plugin(self, name: str) -> None:
        for entry_point in self._entry_points():
            if entry_point.name == name:
                self._load(entry_point)

    def _load_all_plugins(self) -> None:
        for entry_point in self._entry_points():
            if entry_point.name not in self._entries:
                self._load(entry_point)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def import_object(path: str, what: str) -> Any:
    """The object at ``package.module:name`` (or ``package.module.name``), with a message naming ``what``.

    Raises:
        ValueError: the module does not import or has no such attribute.
    """
    import importlib

    text = str(path)
    module_name, sep, attribute = text.partition(":")
    if not sep:
        module_name, _, attribute = text.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{what} {text!r} is not an import path; write package.module:name (or package.module.Name)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {text!r} does not import: {err}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part) and hasattr(obj, "__path__"):  # a package's submodule is no attribute until imported
            try:
                obj = importlib.import_module(f"{obj.__name__}.{part}")
                continue
            except ModuleNotFoundError as err:
                if err.name != f"{obj.__name__}.{part}":  # the submodule is there, one of its imports is not
                    raise ValueError(f"{what} {text!r} does not import: {err}") from None
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            has = f"it has {', '.join(public)}" if public else "it defines no public names"
            raise ValueError(f"{what} {text!r} does not import: {module_name} has no {attribute!r} ({has})") from None
    return obj


def import_modules(modules: list[str] | None) -> None:
    """Import the user's modules that register methods, models or sources; name the one that fails."""
    import importlib

    for module in modules or []:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"imports: {module!r} does not import ({err}); is its folder on PYTHONPATH or the package installed?") from None
