"""The store-backed rank provider: a method's ranks, computed once with the base model and cached.

Hooker et al. (NeurIPS 2019) rank every feature of every train and test image with the *base*
model, once, and reuse those ranks for every retrain. :class:`StoreRanks` is that ranking as a
:class:`~roar.data.ranks.RankProvider` for :class:`~roar.data.roar.RoarDataModule`: the entry of
the :class:`~roar.attribution.store.AttributionStore` whose fingerprint matches is read, or
computed first when missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from roar.attribution.batch_budget import DEFAULT_BATCH_SIZE, DEFAULT_BUDGET, check_batch_size, check_budget
from roar.attribution.compute import check_device, check_ranking, compute_ranks
from roar.attribution.registry import needs_model
from roar.data.ranks import RankProvider


class StoreRanks(RankProvider):
    """Ranks of one attribution method, read from (or computed into) the attribution store.

    Args:
        method: the method's name (a registry key, or the ``name`` of a definition registered
            with :func:`~roar.attribution.registry.normalize_methods`).
        store: folder of the attribution store.
        base_checkpoint: the base model; needed to compute missing ranks of model-based methods.
        method_params: the method's parameters (e.g. ``{"nt_samples": 25}``): part of the fingerprint.
        granularity: ``element`` ranks every channel value (the ROAR code), ``pixel`` whole pixels.
        score: ``abs`` (default), ``square`` or ``raw`` attribution values are ranked.
        target: the class explained: ``predicted`` by the base model (default) or the ``label``.
        tie_seed: seed of the rank tie-breaking.
        batch_size: images per attribution call when ranks must be computed, or ``auto`` (the
            largest that fits ``memory_budget``; :mod:`roar.attribution.batch_budget`).
        memory_budget: ``auto``'s budget: a fraction in (0, 1] of the free memory, or ``"8GiB"``.
        device: ``auto``, ``cpu`` or ``cuda`` for that computation.
    """

    def __init__(
        self,
        method: str = "random",
        store: str = "runs/attributions",
        base_checkpoint: str | None = None,
        method_params: dict[str, Any] | None = None,
        granularity: str = "element",
        score: str = "abs",
        target: str = "predicted",
        tie_seed: int = 0,
        batch_size: int | Literal["auto"] = DEFAULT_BATCH_SIZE,
        device: str = "auto",
        memory_budget: float | str = DEFAULT_BUDGET,
    ) -> None:
        # Every argument is checked here, when the config is read, not when the first batch is masked.
        check_ranking(method, method_params, granularity=granularity, score=score, target=target)
        _check_base_checkpoint(method, method_params, base_checkpoint)
        self.method, self.granularity, self.score = method, granularity, score
        self.store = _check_store(store)
        self.base_checkpoint = base_checkpoint
        self.method_params = dict(method_params or {})
        self.target = target
        self.tie_seed = tie_seed
        self.batch_size = check_batch_size(batch_size)
        check_budget(memory_budget)
        self.memory_budget = memory_budget
        self.device = check_device(device)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "score": self.score, "random_mask": "fixed", "target": self.target,
            "tie_seed": self.tie_seed, "method_params": self.method_params,
        }  # fmt: skip

    def load(self, datamodule: Any, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        ranks = compute_ranks(
            datamodule, self.method, self.store,
            checkpoint=self.base_checkpoint, method_params=self.method_params, granularity=self.granularity,
            score=self.score, target=self.target, tie_seed=self.tie_seed, batch_size=self.batch_size,
            memory_budget=self.memory_budget, device=self.device, progress=progress,
        )  # fmt: skip
        return ranks["train"], ranks["test"]


def _check_store(store: str) -> str:
    """The store must be (or become) a folder: one under a file was a NotADirectoryError traceback in
    prepare_data, after the data was loaded (and, under DDP, with the other processes at a barrier)."""
    existing = next((p for p in (Path(store), *Path(store).absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is an existing file" if existing == Path(store) else f"is under {existing}, which is a file"
        raise ValueError(f"store {store} {where}, not a folder; pass the attribution store's folder (created if missing)")
    return store


def _check_base_checkpoint(method: str, method_params: dict[str, Any] | None, base_checkpoint: str | None) -> None:
    """A model-based method's ranks are keyed by the base checkpoint's sha256, so the file must exist even
    when they are cached. Checked when the config is read: found missing in ``prepare_data``, it was a
    traceback, and under DDP the other processes waited at a barrier until gloo gave up."""
    if not needs_model(method, method_params):
        return
    how = (
        "train the base model first (`python train.py fit` writes a checkpoint under its run folder, "
        "`python -m roar benchmark` writes <out>/base.ckpt) and pass it as --data.ranks.base_checkpoint PATH"
    )
    if base_checkpoint is None:
        raise ValueError(f"method {method!r} ranks with the base model, but no base_checkpoint is given: {how}")
    if not Path(base_checkpoint).is_file():
        raise FileNotFoundError(f"base_checkpoint {base_checkpoint}: no such file; method {method!r} ranks with the base model: {how}")


__all__ = ["StoreRanks"]
