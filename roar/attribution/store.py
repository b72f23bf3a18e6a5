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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from roar.data.masking import attribution_scores, check_granularity, check_score, num_features, ranks_from_scores
from roar.fingerprint import canonical_json, fingerprint_key

log = logging.getLogger(__name__)

AttributeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

RANKS_FILE = "ranks.npy"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
PERMUTATION_CHECK_MAX_ELEMENTS = 1 << 24  # below this, every row is checked to be a permutation on first read
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256 already verified in this process
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


class AttributionStore:
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

    # ----------------------------------------------------------------------------- compute
    def get_or_compute(
        self,
        fingerprint: Mapping[str, Any],
        dataset: Dataset,
        attribute_fn: AttributeFn,
        *,
        granularity: str = "element",
        score: str = "abs",
        tie_seed: int = 0,
        batch_size: int = 128,
        chunk_size: int = 4096,
        device: str | torch.device = "cpu",
        progress: bool = True,
        index_offset: int = 0,
    ) -> np.memmap:
        """Return the ranks for ``fingerprint``, computing and caching them if needed.

        The rank-defining settings (granularity, score, tie_seed) are added to the fingerprint
        (see :func:`complete_fingerprint`); pass the same completed dict to :meth:`load`/:meth:`find`,
        or put them in the fingerprint yourself.

        Args:
            fingerprint: JSON-serialisable dict with at least ``method`` and ``split``.
            dataset: ``dataset[i]`` yields ``(image (C, H, W), label, ...)``; row ``i`` of the
                ranks belongs to sample ``i``.
            attribute_fn: ``(images, labels, indices) -> (B, C, H, W)`` attributions, all on
                ``device``; ``indices`` are the samples' positions in ``dataset``. A
                ``(B, 1, H, W)`` map is broadcast over channels.
            granularity: ``element`` or ``pixel`` (see :mod:`roar.data.masking`).
            score: ``abs``, ``square`` or ``raw``.
            tie_seed: seed of the tie-breaking hash.
            batch_size: samples per ``attribute_fn`` call.
            chunk_size: samples per resumable unit of work; memory holds one batch at a time.
            device: where batches go before ``attribute_fn``.
            progress: show a progress bar over samples.
            index_offset: the global sample index of ``dataset[0]``: ``attribute_fn`` and the
                tie-breaking see ``index_offset + i`` for row ``i``, so that seeded draws of a test
                image differ from those of the train image at the same position (the datamodule's
                global index, :mod:`roar.data.datamodule`). Part of the fingerprint.

        Returns:
            ``(N, F)`` read-only memmap of ranks.

        Raises:
            StoreError: an existing entry for the fingerprint fails verification, or attributions
                contain NaN/inf (nothing is marked complete).
        """
        check_granularity(granularity)
        check_score(score)
        for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(tie_seed, bool) or not isinstance(tie_seed, int):
            raise ValueError(f"tie_seed must be an integer, got {tie_seed!r}")
        if isinstance(index_offset, bool) or not isinstance(index_offset, int) or index_offset < 0:
            raise ValueError(f"index_offset must be a non-negative integer, got {index_offset!r}")
        full = complete_fingerprint(fingerprint, granularity=granularity, score=score, tie_seed=tie_seed)
        if index_offset:  # 0 is left out, so fingerprints made without an offset keep their key
            full = complete_fingerprint(full, index_offset=index_offset)
        entry = self.entry_path(full)

        if (entry / META_FILE).is_file():
            ranks = self.load(full)  # raises if the entry is corrupted: refuse, never silently recompute over it
            if ranks.shape[0] != len(dataset):
                raise StoreError(
                    f"entry {entry} holds {ranks.shape[0]} samples but the dataset has {len(dataset)}; "
                    "the fingerprint should name the dataset"
                )
            msg = f"reusing cached attribution ranks {entry} ({ranks.shape[0]} x {ranks.shape[1]})"
            log.info(msg)
            if progress:
                _console().print(f"[green]{msg}[/green]")
            return ranks
        if entry.exists():
            raise StoreError(f"{entry} exists but has no {META_FILE} (not written by this store?); delete it to recompute")

        n = len(dataset)
        if n == 0:
            raise ValueError(f"cannot compute attributions for an empty dataset (entry {entry})")
        first = dataset[0][0]
        shape = (n, num_features(tuple(first.shape), granularity))
        self._compute(
            full, entry, dataset, attribute_fn, shape, granularity, score, tie_seed, batch_size, chunk_size, torch.device(device), progress,
            index_offset,
        )  # fmt: skip
        return self.load(full)

    def _compute(
        self,
        fingerprint: dict[str, Any],
        entry: Path,
        dataset: Dataset,
        attribute_fn: AttributeFn,
        shape: tuple[int, int],
        granularity: str,
        score: str,
        tie_seed: int,
        batch_size: int,
        chunk_size: int,
        device: torch.device,
        progress: bool,
        index_offset: int = 0,
    ) -> None:
        key = fingerprint_key(fingerprint)
        dtype = ranks_dtype(shape[1])
        n = shape[0]
        num_chunks = -(-n // chunk_size)
        partial = self._partial_path(entry)
        ranks_path, progress_path = partial / RANKS_FILE, partial / PROGRESS_FILE
        state = {"key": key, "shape": list(shape), "dtype": dtype.str, "chunk_size": chunk_size, "chunks_done": []}

        done = self._resume_state(partial, state)
        if done:
            ranks = np.lib.format.open_memmap(ranks_path, mode="r+")
            log.info("resuming %s: %d of %d chunks already done", entry, len(done), num_chunks)
        else:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            ranks = np.lib.format.open_memmap(ranks_path, mode="w+", dtype=dtype, shape=shape)
            _write_json_atomic(progress_path, state)

        method = fingerprint.get("method")
        todo = [c for c in range(num_chunks) if c not in done]
        already = sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in done)
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"attributing {method}/{fingerprint.get('split')}", total=n, completed=already)
            for chunk in todo:
                start, stop = chunk * chunk_size, min(n, (chunk + 1) * chunk_size)
                loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, shuffle=False, num_workers=0)
                offset = start
                for batch in loader:
                    images, labels = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
                    indices = torch.arange(index_offset + offset, index_offset + offset + len(images), device=device)
                    batch_ranks = self._batch_ranks(attribute_fn, images, labels, indices, granularity, score, tie_seed, entry, method)
                    ranks[offset : offset + len(images)] = batch_ranks.cpu().numpy().astype(dtype, copy=False)
                    offset += len(images)
                    bar.advance(task, len(images))
                # Only data already on disk may be recorded as done: flush before the progress file.
                ranks.flush()
                done.add(chunk)
                _write_json_atomic(progress_path, {**state, "chunks_done": sorted(done)})
        del ranks

        meta = {
            "fingerprint": fingerprint,
            "key": key,
            "shape": list(shape),
            "dtype": dtype.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "num_chunks": num_chunks,
            "chunk_size": chunk_size,
            "batch_size": batch_size,
        }
        meta["ranks_sha256"] = file_sha256(ranks_path)
        progress_path.unlink()
        _write_json_atomic(partial / META_FILE, meta)
        # The rename is the commit point: the entry appears complete or not at all.
        os.replace(partial, entry)
        log.info("cached attribution ranks at %s", entry)

    def _resume_state(self, partial: Path, state: dict[str, Any]) -> set[int]:
        """Chunks already finished by an interrupted run with the same settings (empty if none)."""
        ranks_path, progress_path = partial / RANKS_FILE, partial / PROGRESS_FILE
        if not (progress_path.is_file() and ranks_path.is_file()):
            return set()
        try:
            previous = json.loads(progress_path.read_text())
            if all(previous.get(k) == state[k] for k in ("key", "shape", "dtype", "chunk_size")):
                self._verify_ranks_file(ranks_path, tuple(state["shape"]), np.dtype(state["dtype"]), partial)
                done = {int(c) for c in previous["chunks_done"]}
                if all(0 <= c < -(-state["shape"][0] // state["chunk_size"]) for c in done):
                    return done
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # StoreError is a ValueError: a damaged partial file is simply recomputed
        log.info("discarding an incompatible or damaged partial attribution entry %s", partial)
        return set()

    @staticmethod
    def _batch_ranks(
        attribute_fn: AttributeFn,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        granularity: str,
        score: str,
        tie_seed: int,
        entry: Path,
        method: Any,
    ) -> torch.Tensor:
        attributions = attribute_fn(images, labels, indices)
        if not isinstance(attributions, torch.Tensor):
            raise StoreError(f"attribution method {method!r} returned {type(attributions).__name__}, not a tensor (entry {entry})")
        attributions = attributions.detach()
        if attributions.ndim == 4 and attributions.shape[1] == 1 and images.shape[1] > 1 and attributions.shape[2:] == images.shape[2:]:
            attributions = attributions.expand_as(images)
        if attributions.shape != images.shape:
            raise StoreError(
                f"attribution method {method!r} returned shape {tuple(attributions.shape)} for images {tuple(images.shape)} (entry {entry})"
            )
        bad = ~torch.isfinite(attributions).flatten(1).all(dim=1)
        if bool(bad.any()):
            raise StoreError(
                f"attribution method {method!r} produced NaN/inf for samples {indices[bad].tolist()} (entry {entry}); nothing was cached for them"
            )
        with torch.no_grad():
            return ranks_from_scores(attribution_scores(attributions, score, granularity), indices, tie_seed)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_console(),
        disable=not enabled,
        transient=False,
    )


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
