"""Computing an attribution store entry: rank every sample once, in resumable chunks, then commit by rename.

The entry is written under a hidden ``.<split>-<key[:16]>.partial`` folder chunk by chunk, with a
progress file so an interrupted run resumes where it stopped; the rename into place is the commit
point, so a crash never leaves an entry that looks finished (Hooker et al. 2019's ROAR ranks every
train and test feature once, up front, before its many retrains).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from roar.attribution.store_format import (
    META_FILE, PROGRESS_FILE, RANKS_FILE, AttributeFn, StoreError, _versions, _write_json_atomic, complete_fingerprint, file_sha256, ranks_dtype,
)  # fmt: skip
from roar.attribution.store_reader import StoreReadMixin
from roar.data.ranking import attribution_scores, check_granularity, check_score, num_features, ranks_from_scores
from roar.fingerprint import fingerprint_key

log = logging.getLogger("roar.attribution.store")  # the store's one logger, whichever module logs: users and tests filter on it


class StoreComputeMixin(StoreReadMixin):
    """The computing half of :class:`~roar.attribution.store.AttributionStore`: get_or_compute and its resumable chunks."""

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
            granularity: ``element`` or ``pixel`` (see :mod:`roar.data.ranking`).
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
                _console().print(f"[green]{msg}[/green]", soft_wrap=True)  # one line in a log, however long the path
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
        # gone when done: the caller's one line per method (ranks of X: ready) stays, not a bar per split
        transient=True,
    )

