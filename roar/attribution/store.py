"""A disk cache of attribution ranks: compute once per (checkpoint, method, split), verify, reuse.

ROAR (Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks",
NeurIPS 2019) retrains a model for every (method, threshold, seed) on data masked by the same
per-image rankings, so each method ranks every train and test feature once, up front. This module
keeps those ranks on disk as a memory-mapped ``.npy`` array next to the *fingerprint* that made
them, and hands them back only for exactly the same fingerprint (DESIGN.md, "Fingerprints").

Layout of one entry::

    root/<method>/<split>-<key[:16]>/ranks.npy    (N, F) uint16 (F <= 65536) or int32
    root/<method>/<split>-<key[:16]>/meta.json    fingerprint, key, shape, dtype, versions, ...

``key`` is the sha256 of the fingerprint's canonical JSON. An entry is written under a hidden
temporary name (``.<split>-<key[:16]>.partial``) chunk by chunk, with a progress file so an
interrupted run resumes where it stopped, and is renamed into place only once complete, so a
crash never leaves an entry that looks finished.

This module is the store itself; its entry format (:mod:`roar.attribution.store_format`), reading
and verification (:mod:`roar.attribution.store_reader`) and the compute path
(:mod:`roar.attribution.store_compute`) live beside it, and their public names are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from roar.attribution.store_compute import StoreComputeMixin
from roar.attribution.store_format import (  # noqa: F401  (the constants, AttributeFn, file_sha256: importable from here before the split)
    META_FILE, PROGRESS_FILE, RANKS_FILE, UINT16_MAX_FEATURES, AttributeFn, StoreEntry, StoreError, checkpoint_sha256, complete_fingerprint,
    file_sha256, ranks_dtype,
)  # fmt: skip
from roar.attribution.store_reader import PERMUTATION_CHECK_MAX_ELEMENTS  # noqa: F401  (importable from here before the split)
from roar.fingerprint import canonical_json, fingerprint_key


class AttributionStore(StoreComputeMixin):
    """Memory-mapped attribution ranks on disk, keyed by fingerprint.

    A fingerprint is any JSON-serialisable dict that identifies what produced the ranks: at least
    ``method`` and ``split`` (they name the folder), and in practice the checkpoint's sha256
    (:func:`checkpoint_sha256`), the method's parameters, the dataset id, the attribution target,
    granularity, score and tie seed. Entries are reused only for an identical fingerprint.

    Args:
        root: folder holding the cache (created on first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)


__all__ = [
    "AttributionStore",
    "StoreEntry",
    "StoreError",
    "canonical_json",
    "checkpoint_sha256",
    "complete_fingerprint",
    "fingerprint_key",
    "ranks_dtype",
]
