"""Fingerprints: the identity of everything that produced an artefact (DESIGN.md, "Fingerprints").

A result row, a base checkpoint and an attribution entry are reused from disk only when the
fingerprint of what produced them equals the one of the current request. A fingerprint is a
JSON-able dict of *resolved* settings (defaults filled in) and the fingerprints of upstream
artefacts; its key is the sha256 of its canonical JSON. When two fingerprints differ,
:func:`differences` names the settings that changed, so a refusal can say what moved.

This module is cheap to import (no torch) and imports nothing else of roar's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import metadata
from typing import Any


def canonical_json(fingerprint: Mapping[str, Any]) -> str:
    """The fingerprint as canonical JSON (sorted keys, no whitespace); ValueError if not JSON-able."""
    if not isinstance(fingerprint, Mapping):
        raise ValueError(f"a fingerprint must be a dict, got {type(fingerprint).__name__}")
    try:
        return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"fingerprint is not JSON-serialisable ({err}): {fingerprint!r}") from None


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """sha256 (hex) of the fingerprint's canonical JSON."""
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()


def roar_version() -> str:
    """``major.minor`` of the running roar: part of every fingerprint.

    A minor release may change how ranks, masks or training are computed, so artefacts of another
    minor version are recomputed rather than trusted; patch releases keep them. Read from the
    code that runs (``roar.__version__``, the one source of the package version), not from the
    installed metadata, which an editable install leaves at the version it was installed with.
    """
    import roar

    return ".".join(roar.__version__.split(".")[:2])


def jsonable(value: Any) -> Any:
    """A JSON-able, canonical copy: tuples become lists, tensors and arrays their values.

    Large tensors (e.g. reference images passed as a parameter) are replaced by their sha256, so
    a fingerprint stays small but still changes when one value does.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):  # a numpy array
        if value.size <= 16:
            return jsonable(value.tolist())
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        return {"array_sha256": digest, "shape": list(value.shape), "dtype": str(value.dtype)}
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def source_sha256(obj: Any) -> str:
    """sha256 of the source file that defines ``obj`` (a function, a class, a module).

    Part of the fingerprint of user code (a method by import path, a registered method, a
    datamodule, a network): editing the file invalidates what it produced, and so does editing a
    module of the user's own code that it imports, directly or not (:mod:`roar.source_files`).
    Objects without a readable source file (C extensions) fall back to their qualified name and
    their package's version.
    """
    import inspect
    import os
    import sys

    module = sys.modules.get(getattr(obj, "__module__", None) or "") if not inspect.ismodule(obj) else obj
    try:
        path = inspect.getsourcefile(module if module is not None else obj)
    except TypeError:
        path = None
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read())
        # The local modules it imports (its helpers), by name and content; none: the file's own sha256.
        from roar.source_files import own_source_files

        helpers = own_source_files(module.__name__) if module is not None else {}
        for name, helper in sorted(helpers.items()):
            if name != module.__name__:  # the file itself, hashed above
                with open(helper, "rb") as f:
                    digest.update(f"\0{name}\0".encode() + hashlib.sha256(f.read()).digest())
        return digest.hexdigest()
    package = (getattr(module, "__name__", "") or "").split(".")[0]
    try:
        version = metadata.version(package)
    except (metadata.PackageNotFoundError, ValueError):
        version = "unknown"
    name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    return hashlib.sha256(f"{name}=={version}".encode()).hexdigest()


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 12) -> list[str]:
    """Human-readable settings that differ between two fingerprints, e.g. ``trainer.max_epochs: 8 -> 3``.

    Nested dicts are compared leaf by leaf under dotted names; at most ``limit`` lines are returned
    (with a final ``... and N more``).
    """
    flat_old: dict[str, Any] = {}
    flat_new: dict[str, Any] = {}
    _flatten(jsonable(old), "", flat_old)
    _flatten(jsonable(new), "", flat_new)
    missing = "<not set>"
    lines = [
        f"{key}: {json.dumps(flat_old.get(key, missing))} -> {json.dumps(flat_new.get(key, missing))}"
        for key in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(key, missing) != flat_new.get(key, missing)
    ]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


__all__ = ["canonical_json", "differences", "fingerprint_key", "jsonable", "roar_version", "source_sha256"]
