"""Reading the attribution store: where an entry lives, which entries exist, and loading one only after verifying it.

An entry is handed back only for exactly the fingerprint that made it, with the recorded shape,
dtype and content sha256, and rows that are permutations (DESIGN.md, "Fingerprints").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from roar.attribution.store_format import META_FILE, RANKS_FILE, StoreEntry, StoreError, file_sha256
from roar.fingerprint import canonical_json, fingerprint_key

log = logging.getLogger("roar.attribution.store")  # the store's one logger, whichever module logs: users and tests filter on it

PERMUTATION_CHECK_MAX_ELEMENTS = 1 << 24  # below this, every row is checked to be a permutation on first read
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256 already verified in this process


class StoreReadMixin:
    """The reading half of :class:`~roar.attribution.store.AttributionStore`: paths, queries, verification."""

    root: Path

    # ----------------------------------------------------------------------------- paths
    def entry_path(self, fingerprint: Mapping[str, Any]) -> Path:
        """Where the entry for this fingerprint lives (whether or not it exists)."""
        key = fingerprint_key(fingerprint)
        method, split = (self._name_part(fingerprint, field) for field in ("method", "split"))
        return self.root / method / f"{split}-{key[:16]}"

    @staticmethod
    def _name_part(fingerprint: Mapping[str, Any], field: str) -> str:
        value = fingerprint.get(field)
        if not isinstance(value, str) or not value or value.startswith(".") or any(c in value for c in "/\\\0"):
            raise ValueError(f"fingerprint needs a {field!r} string usable as a folder name, got {value!r}")
        return value

    @staticmethod
    def _partial_path(entry: Path) -> Path:
        return entry.with_name(f".{entry.name}.partial")

    # ----------------------------------------------------------------------------- queries
    def find(self, fingerprint: Mapping[str, Any]) -> Path | None:
        """The folder of the complete entry for this fingerprint, or None if there is none."""
        entry = self.entry_path(fingerprint)
        meta_path = entry / META_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return entry if meta.get("key") == fingerprint_key(fingerprint) else None

    def entries(self) -> list[StoreEntry]:
        """All complete entries under ``root`` (partial ones are skipped), sorted by path."""
        found = []
        for meta_path in sorted(self.root.glob(f"*/*/{META_FILE}")):
            if meta_path.parent.name.startswith("."):
                continue
            try:
                meta = json.loads(meta_path.read_text())
                found.append(
                    StoreEntry(meta_path.parent, meta["fingerprint"], tuple(meta["shape"]), meta["dtype"], meta.get("created", ""))
                )
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
                log.warning("skipping unreadable attribution entry %s: %s", meta_path.parent, err)
        return found

    def load(self, fingerprint: Mapping[str, Any]) -> np.memmap:
        """Open the ranks of a complete entry, read-only, after verifying it.

        Checks that meta.json records exactly this fingerprint, and that ranks.npy has the recorded
        shape and dtype and its full size on disk.

        Returns:
            ``(N, F)`` read-only memmap of ranks (0 = most important feature).

        Raises:
            StoreError: the entry is missing, incomplete, truncated, or made from another fingerprint.
        """
        entry = self.entry_path(fingerprint)
        meta_path, ranks_path = entry / META_FILE, entry / RANKS_FILE
        if not meta_path.is_file():
            partial = " (an unfinished computation exists; rerun get_or_compute to resume it)" if self._partial_path(entry).exists() else ""
            raise StoreError(f"no attribution entry at {entry}{partial}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"unreadable {meta_path}: {err}; delete {entry} to recompute it") from None
        if not isinstance(meta, dict) or "fingerprint" not in meta or "shape" not in meta or "dtype" not in meta:
            raise StoreError(f"{meta_path} lacks fingerprint/shape/dtype; delete {entry} to recompute it")
        if canonical_json(meta["fingerprint"]) != canonical_json(fingerprint):
            stored = meta["fingerprint"]
            differ = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k, "<absent>") != fingerprint.get(k, "<absent>"))
            raise StoreError(f"entry {entry} was made from another fingerprint (differs in: {', '.join(differ)}); refusing to reuse it")
        if meta.get("key") != fingerprint_key(meta["fingerprint"]):
            raise StoreError(f"{meta_path} was edited: its key does not match its fingerprint; delete {entry} to recompute it")
        shape, dtype = tuple(int(s) for s in meta["shape"]), np.dtype(meta["dtype"])
        self._verify_ranks_file(ranks_path, shape, dtype, entry)
        self._verify_content(ranks_path, meta, entry)
        return np.lib.format.open_memmap(ranks_path, mode="r")

    @staticmethod
    def _verify_content(ranks_path: Path, meta: Mapping[str, Any], entry: Path) -> None:
        """The file's sha256 equals the one recorded when it was written; rows are permutations.

        Flipped bytes leave the size and header intact, so only the content tells. A file verified
        once in this process is not hashed again unless it changed on disk (mtime or size).
        """
        expected = meta.get("ranks_sha256")
        if not isinstance(expected, str):
            raise StoreError(f"{entry} has no content checksum (written by an older roar); delete {entry} to recompute it")
        stat = ranks_path.stat()
        stamp = (str(ranks_path.resolve()), stat.st_mtime_ns, stat.st_size)
        if _VERIFIED.get(stamp) == expected:
            return
        actual = file_sha256(ranks_path)
        if actual != expected:
            raise StoreError(
                f"{ranks_path} is corrupted: its sha256 is {actual[:16]}... but {META_FILE} records {expected[:16]}...; "
                f"delete {entry} to recompute it"
            )
        ranks = np.lib.format.open_memmap(ranks_path, mode="r")
        n, f = ranks.shape
        if ranks.size and int(ranks.max()) >= f:
            raise StoreError(f"{ranks_path} holds ranks >= {f} (not permutations of 0..{f - 1}); delete {entry} to recompute it")
        if 0 < ranks.size <= PERMUTATION_CHECK_MAX_ELEMENTS and not np.array_equal(np.sort(ranks, axis=1), np.broadcast_to(np.arange(f, dtype=ranks.dtype), (n, f))):
            raise StoreError(f"{ranks_path} has rows that are not permutations of 0..{f - 1}; delete {entry} to recompute it")
        _VERIFIED[stamp] = expected

    @staticmethod
    def _verify_ranks_file(ranks_path: Path, shape: tuple[int, ...], dtype: np.dtype, entry: Path) -> None:
        if not ranks_path.is_file():
            raise StoreError(f"entry {entry} has no {RANKS_FILE}; delete {entry} to recompute it")
        try:
            with ranks_path.open("rb") as fh:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
                data_offset = fh.tell()
        except (OSError, ValueError) as err:
            raise StoreError(f"{ranks_path} is not a valid .npy file ({err}); delete {entry} to recompute it") from None
        file_shape, fortran, file_dtype = header
        if tuple(file_shape) != shape or np.dtype(file_dtype) != dtype or fortran:
            raise StoreError(
                f"{ranks_path} holds {tuple(file_shape)} {np.dtype(file_dtype)} but meta.json records {shape} {dtype}; "
                f"delete {entry} to recompute it"
            )
        expected = data_offset + int(np.prod(shape)) * dtype.itemsize
        actual = ranks_path.stat().st_size
        if actual != expected:
            raise StoreError(f"{ranks_path} is {actual} bytes, expected {expected} (truncated or corrupted); delete {entry} to recompute it")

