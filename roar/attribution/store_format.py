"""The attribution store's entry format: file names, rank dtype, checksums, metadata and fingerprint settings.

One entry is ``ranks.npy`` ((N, F) uint16 or int32) and ``meta.json`` (fingerprint, key, shape,
dtype, versions, content sha256) in ``root/<method>/<split>-<key[:16]>/``; see
:mod:`roar.attribution.store` (Hooker et al. 2019 rank every feature once, then retrain many times).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

AttributeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

RANKS_FILE = "ranks.npy"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
UINT16_MAX_FEATURES = 1 << 16  # ranks 0..F-1 fit in uint16 up to F = 65536


class StoreError(ValueError):
    """A cached entry is missing, incomplete, corrupted, or does not match its fingerprint."""


def checkpoint_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks so large checkpoints need little memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def ranks_dtype(num_features: int) -> np.dtype:
    """uint16 when ranks ``0..F-1`` fit (``F <= 65536``), else int32."""
    return np.dtype(np.uint16) if num_features <= UINT16_MAX_FEATURES else np.dtype(np.int32)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"torch": torch.__version__, "numpy": np.__version__}
    for package in ("captum", "roar"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def complete_fingerprint(
    fingerprint: Mapping[str, Any],
    *,
    granularity: str | None = None,
    score: str | None = None,
    tie_seed: int | None = None,
    index_offset: int | None = None,
) -> dict[str, Any]:
    """Add the rank-defining settings to a fingerprint, refusing ones that contradict it.

    Ranks depend on the granularity, the score, the tie seed and the samples' global indices as
    much as on the attributions, so they are always part of the key. A fingerprint that already
    states them must agree.
    """
    full = dict(fingerprint)
    settings = (("granularity", granularity), ("score", score), ("tie_seed", tie_seed), ("index_offset", index_offset))
    for name, value in settings:
        if value is None:
            continue
        if name in full and full[name] != value:
            raise ValueError(f"fingerprint says {name}={full[name]!r} but {name}={value!r} was requested")
        full[name] = value
    return full


@dataclass(frozen=True)
class StoreEntry:
    """A complete entry on disk, as listed by :meth:`AttributionStore.entries`."""

    path: Path
    fingerprint: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str
    created: str

    @property
    def method(self) -> str:
        return str(self.fingerprint.get("method"))

    @property
    def split(self) -> str:
        return str(self.fingerprint.get("split"))

