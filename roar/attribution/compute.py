"""Glue: a base checkpoint + a datamodule + a method name -> cached ranks of every train/test image.

ROAR (Hooker et al., NeurIPS 2019) needs each method's ranking of every feature of every image
of both splits, computed once with the *base* model and reused by every retrain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from roar.attribution.base import TARGETS, resolve_target
from roar.attribution.batch_budget import AUTO, DEFAULT_BATCH_SIZE, DEFAULT_BUDGET, auto_batch_size, check_batch_size, check_budget
from roar.attribution.device import DEVICES as DEVICES, DeviceUnavailableError as DeviceUnavailableError, check_device as check_device, resolve_device
from roar.attribution.ensembles import check_ensemble_settings
from roar.attribution.registry import ENSEMBLE_PARAMS, captum_uses_the_batch, get_method, needs_model, resolved_params
from roar.attribution.store import AttributionStore, checkpoint_sha256, complete_fingerprint
from roar.data.ranking import check_granularity, check_score
from roar.fingerprint import fingerprint_key, jsonable, roar_version
from roar.models.checkpoint import load_classifier

log = logging.getLogger(__name__)

ORACLES = ("ground_truth", "inverted")
"""Rankings that need the synthetic benchmark's informative weights."""


def check_method(name: str, params: dict[str, Any] | None = None) -> str:
    """A method name with its parameters (or definition), checked before any compute."""
    resolved_params(name, params)
    # an ensemble's values too (noise_mode: abs), not only its keys: a retrain reaches the method only inside trainer.fit
    check_ensemble_settings(**{k: v for k, v in (params or {}).items() if k in ENSEMBLE_PARAMS})
    return name


def check_ranking(method: str, params: dict[str, Any] | None, *, granularity: str, score: str, target: str) -> None:
    """A method and how its maps become ranks, checked before any compute (each bad value named with the choices)."""
    check_method(method, params)
    check_granularity(granularity)
    check_score(score)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")


BATCH_DEPENDENT = ("gradient_shap",)
"""Methods whose default references are the other images of the batch: their maps depend on the
attribution batch size, which is then part of their fingerprint (give ``baselines`` to avoid it).
So are captum classes given ``attribute_args: {baselines: batch}``, and ``FeaturePermutation``.
For them ``batch_size: auto`` is :data:`~roar.attribution.batch_budget.DEFAULT_BATCH_SIZE`, never
a machine's memory: the same config gives the same ranks on any machine."""


def is_batch_dependent(method: str, params: dict[str, Any]) -> bool:
    """Whether ``method``'s maps depend on the attribution batch (see :data:`BATCH_DEPENDENT`)."""
    resolved = resolved_params(method, params)
    key = str(resolved.get("method", method))  # a key under a new name ({name: gs, method: gradient_shap}) too
    if captum_uses_the_batch(method, params):  # references drawn from the batch, or features permuted across it
        return True
    return key.startswith(BATCH_DEPENDENT) and resolved.get("baselines") is None


def method_fingerprint(
    method: str,
    params: dict[str, Any],
    *,
    checkpoint_sha: str | None,
    dataset_id: dict[str, Any],
    split: str,
    target: str,
    batch_size: int | str | None = None,
) -> dict[str, Any]:
    """What identifies a cached ranking (DESIGN.md, "Fingerprints").

    The method's *resolved* parameters (defaults filled in, memory-only ones left out), the base
    checkpoint's sha256 and the target (model-based methods only), the dataset, the split and
    roar's major.minor version; the batch size only where it changes the maps (``auto`` is then
    :data:`~roar.attribution.batch_budget.DEFAULT_BATCH_SIZE`), so for every other method ranks
    computed with any batch size, ``auto`` included, are reused by any other.
    """
    reads_model = needs_model(method, params)
    resolved = resolved_params(method, params)
    fingerprint = {
        "method": method,
        "params": jsonable(resolved),
        "checkpoint_sha256": checkpoint_sha if reads_model else None,
        "target": target if reads_model else None,
        "dataset": dataset_id,
        "split": split,
        "roar": roar_version(),
    }
    if is_batch_dependent(method, params):
        fingerprint["batch_size"] = DEFAULT_BATCH_SIZE if batch_size == AUTO else batch_size
    return fingerprint


def compute_ranks(
    datamodule: Any,
    method: str,
    store: AttributionStore | str | Path,
    *,
    checkpoint: str | Path | None = None,
    model: nn.Module | None = None,
    method_params: dict[str, Any] | None = None,
    granularity: str = "element",
    score: str = "abs",
    target: str = "predicted",
    tie_seed: int = 0,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    memory_budget: float | str = DEFAULT_BUDGET,
    chunk_size: int = 4096,
    device: str | torch.device = "auto",
    splits: Sequence[str] = ("train", "test"),
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> dict[str, np.memmap]:
    """Rank every feature of every image of ``splits`` with ``method``, through the store.

    Args:
        datamodule: an :class:`~roar.data.datamodule.ImageDataModule` (gives the images and
            ``dataset_id``).
        method: a registry key.
        store: the store or its folder.
        checkpoint: the base model's checkpoint; required by model-based methods (its sha256 is
            part of the fingerprint). ``model`` may be passed too, to skip reloading it.
        method_params: the method's parameters (part of the fingerprint).
        granularity, score, tie_seed: how attributions become ranks (see :mod:`roar.data.ranking`).
        target: ``predicted`` (base model's class, as the ROAR code) or ``label``.
        batch_size: images per attribution call, or ``auto``: the largest power of two whose
            measured peak fits ``memory_budget`` (:mod:`roar.attribution.batch_budget`; the
            fixed default for batch-dependent methods). Memory only, except for those methods.
        memory_budget: ``auto``'s budget: a fraction in (0, 1] of the free memory, or a size
            (``"8GiB"``).
        chunk_size: images per resumable unit.
        device: ``auto``, ``cpu``, ``cuda``...
        splits: the source splits to rank.
        progress: progress bars.
        say: where ``batch_size: auto`` says the batch it chose, in one line (default: this
            module's logger, at info level).

    Returns:
        ``{split: (N, F) memmap of ranks}``.
    """
    check_ranking(method, method_params, granularity=granularity, score=score, target=target)
    batch_size, budget = check_batch_size(batch_size), check_budget(memory_budget)
    store = store if isinstance(store, AttributionStore) else AttributionStore(store)
    params = _with_oracle_weights(datamodule, method, method_params)
    reads_model = needs_model(method, params)
    sha = None
    if reads_model:
        if checkpoint is None:
            raise ValueError(f"method {method!r} explains a model: give the base checkpoint")
        sha = checkpoint_sha256(checkpoint)
        if model is None:
            model = load_classifier(checkpoint, num_classes=datamodule.num_classes, in_chans=datamodule.in_chans, image_size=datamodule.image_size)
    dev = resolve_device(device)
    if model is not None:
        model = model.to(dev).eval()
    explain = get_method(method, model=model if reads_model else None, **params)

    def attribute(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        targets = resolve_target(model, images, labels, target) if reads_model else labels
        return explain(images, targets, indices)

    batch = batch_size if batch_size != AUTO else DEFAULT_BATCH_SIZE if is_batch_dependent(method, params) else None
    if batch_size == AUTO and batch is not None:
        (say or log.info)(f"attribution batch: {batch} (auto is the fixed default for {method}: its maps depend on the batch)")
    out = {}
    for split in splits:
        fingerprint = method_fingerprint(method, params, checkpoint_sha=sha, dataset_id=datamodule.dataset_id, split=split, target=target, batch_size=batch_size)
        dataset, offset = datamodule.source_split(split), _index_offset(datamodule, split)
        full = complete_fingerprint(fingerprint, granularity=granularity, score=score, tie_seed=tie_seed, index_offset=offset or None)
        if batch is None and store.find(full) is None:  # auto, and something to compute: measure once per method
            batch, line = auto_batch_size(_probe_step(store, attribute, dataset, dev, full), len(dataset), dev, budget)
            (say or log.info)(line)
        out[split] = store.get_or_compute(
            fingerprint,
            dataset,
            attribute,
            granularity=granularity,
            score=score,
            tie_seed=tie_seed,
            batch_size=batch or DEFAULT_BATCH_SIZE,  # None: this entry is cached, no batch runs
            chunk_size=chunk_size,
            device=dev,
            progress=progress,
            # one global index per sample (the datamodule's): test image j is not train image j
            index_offset=offset,
        )
    return out


def _probe_step(store: AttributionStore, attribute: Any, dataset: Any, device: torch.device, fingerprint: dict[str, Any]) -> Any:
    """``step(n)``: the store's whole per-batch work (load, attribute, score, rank) on the first ``n`` images."""
    def step(n: int) -> torch.Tensor:
        images, labels = next(iter(DataLoader(Subset(dataset, range(n)), batch_size=n)))[:2]
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        indices = torch.arange(n, device=device)
        return store._batch_ranks(
            attribute, images, labels, indices, fingerprint["granularity"], fingerprint["score"], fingerprint["tie_seed"],
            store.entry_path(fingerprint), fingerprint["method"],
        )  # fmt: skip

    return step


def _index_offset(datamodule: Any, split: str) -> int:
    return 0 if split == "train" else datamodule.num_train_pool


def _with_oracle_weights(datamodule: Any, method: str, method_params: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(method_params or {})
    if method in ORACLES and "weights" not in params:
        weights = datamodule.source.extras.get("informative_weights")
        if weights is None:
            raise ValueError(f"method {method!r} needs the source's informative weights; only synthetic_linear has them (source is {datamodule.source_name!r})")
        params["weights"] = weights
    return params


def rank_entry_keys(
    datamodule: Any,
    method: str,
    *,
    checkpoint_sha: str | None,
    method_params: dict[str, Any] | None = None,
    granularity: str = "element",
    score: str = "abs",
    target: str = "predicted",
    tie_seed: int = 0,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    splits: Sequence[str] = ("train", "test"),
) -> dict[str, str]:
    """The store keys of the entries :func:`compute_ranks` reads or writes with these arguments.

    A retrain's fingerprint includes them, so a run is tied to the exact ranks that masked it.
    """
    params = _with_oracle_weights(datamodule, method, method_params)
    sha = checkpoint_sha if needs_model(method, params) else None
    keys = {}
    for split in splits:
        fingerprint = method_fingerprint(method, params, checkpoint_sha=sha, dataset_id=datamodule.dataset_id, split=split, target=target, batch_size=batch_size)
        offset = _index_offset(datamodule, split)
        full = complete_fingerprint(fingerprint, granularity=granularity, score=score, tie_seed=tie_seed, index_offset=offset or None)
        keys[split] = fingerprint_key(full)
    return keys


def probe_methods(
    datamodule: Any,
    methods: Sequence[str],
    method_params: dict[str, dict[str, Any]] | None = None,
    model: nn.Module | None = None,
    num_images: int = 2,
) -> None:
    """Run every method on a few training images and refuse one that fails, before any training.

    A user's method that raises, returns the wrong shape, or returns NaN/inf is named with what
    it did, instead of failing halfway through ranking the train set. ``model`` is any model of
    the benchmark's architecture (an untrained one is enough to catch these).

    Raises:
        ValueError: naming the method and what it returned.
    """
    dataset = datamodule.source_split("train")
    items = [dataset[i] for i in range(min(num_images, len(dataset)))]
    images = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    indices = torch.arange(len(items))
    if model is not None:
        model = model.eval()
    for name in methods:
        params = _with_oracle_weights(datamodule, name, (method_params or {}).get(name))
        reads_model = needs_model(name, params)
        try:
            method = get_method(name, model=model if reads_model else None, **params)
            maps = method(images, labels if not reads_model else resolve_target(model, images), indices)
        except Exception as err:  # anything a user's code raises: say whose it is
            raise ValueError(f"attribution method {name!r} failed on a probe batch of {len(items)} training images "
                             f"{tuple(images.shape)}: {type(err).__name__}: {err}") from err  # fmt: skip
        if maps.shape != images.shape:
            raise ValueError(f"attribution method {name!r} returned shape {tuple(maps.shape)} on a probe batch; it must return the inputs' shape {tuple(images.shape)}")
        bad = (~torch.isfinite(maps)).sum().item()
        if bad:
            raise ValueError(f"attribution method {name!r} returned {bad} non-finite values (NaN or inf) of {maps.numel()} on a probe batch of {len(items)} training images")
