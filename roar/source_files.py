"""The source files a user's code is made of: its own module and the local modules it imports.

A method, network or datamodule named by import path is fingerprinted by its source (see
:func:`roar.fingerprint.source_sha256`). Its own file is not enough: ``mypkg/saliency.py`` that
calls ``mypkg/filters.py`` computes other maps when ``filters.py`` changes, and ranks, base
models and results computed with the old helper must not be reused. So the fingerprint follows
the module's imports, transitively, through every module that lives in the user's own code.

"Own code" is every ``.py`` file outside the Python installation (the standard library and
``site-packages``, whose packages are covered by their versions) and outside roar (covered by
roar's version). Imports are read from the source (``ast``), not from ``sys.modules``, so the set
does not depend on what happened to be imported before; an import inside a function counts too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import sysconfig
from functools import lru_cache

# Enough for any real project; a bound keeps a pathological import graph from walking forever.
MAX_FILES = 500


@lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    """Folders whose modules are installed code (stdlib, site-packages) or roar itself."""
    paths = sysconfig.get_paths()
    roots = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {os.path.join(prefix, "lib") for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}}
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # roar itself
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots if r))


def _is_own(path: str) -> bool:
    real = os.path.realpath(path)
    return real.endswith(".py") and not any(real.startswith(root) for root in _installed_roots())


def _file_of(name: str) -> tuple[str | None, bool]:
    """The source file of module ``name`` and whether it is a package, without running it if it is not loaded."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None), hasattr(module, "__path__")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):  # a parent that does not import, a relative name gone wrong
        return None, False
    if spec is None or not spec.has_location:
        return None, False
    return spec.origin, spec.submodule_search_locations is not None


def _imported_names(path: str, name: str, is_package: bool) -> list[str]:
    """Every module name an ``import`` or ``from ... import`` in ``path`` may load."""
    try:
        stamp = os.stat(path)
    except OSError:
        return []
    # parsed once per version of the file: a grid fingerprints its methods for every run
    return list(_parsed_imports(path, stamp.st_mtime_ns, stamp.st_size, name, is_package))


@lru_cache(maxsize=4096)
def _parsed_imports(path: str, mtime_ns: int, size: int, name: str, is_package: bool) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ()
    package = name if is_package else name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            except (ImportError, ValueError):
                continue
            if not base:
                continue
            names.append(base)
            # `from pkg import helpers` loads the submodule pkg.helpers when there is one.
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return tuple(_with_parents(names))


def _with_parents(names: list[str]) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first: they count too."""
    out: list[str] = []
    for name in names:
        parts = name.split(".")
        out += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return out


def own_source_files(module_name: str) -> dict[str, str]:
    """``{module name: file}`` of ``module_name`` and of every module of the user's own code it imports.

    ``module_name`` itself is always included when it has a source file (even when installed);
    the others only when they are the user's own code (see the module docstring).
    """
    files: dict[str, str] = {}
    root_file, root_is_package = _file_of(module_name)
    if not root_file or not os.path.isfile(root_file):
        return files
    files[module_name] = root_file
    pending = [(module_name, root_file, root_is_package)]
    visited = {module_name}
    while pending and len(files) < MAX_FILES:
        name, path, is_package = pending.pop()
        parents = _with_parents([name])[:-1] if name == module_name else []
        for imported in parents + _imported_names(path, name, is_package):
            if imported in visited:
                continue
            visited.add(imported)
            # A name under a package that is not the user's own is not followed: `import numpy.linalg`.
            top_file, _ = _file_of(imported.split(".")[0]) if "." in imported else (None, False)
            if top_file is not None and not _is_own(top_file):
                continue
            file, package = _file_of(imported)
            if file and os.path.isfile(file) and _is_own(file):
                files[imported] = file
                pending.append((imported, file, package))
    return files


__all__ = ["MAX_FILES", "own_source_files"]
