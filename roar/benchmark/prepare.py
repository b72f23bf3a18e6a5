"""What every run of the grid reads, prepared once before the grid starts: the base model and its ranks.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019)
retrain on images masked by each method's ranking of *one* trained base model. That base model is
trained here (or reused when ``<out>/base.ckpt`` records exactly these settings, or taken from the
user's ``base.checkpoint``), refused when it diverged or stayed near chance, and every method's
ranks of every train and test image are computed into the attribution store, once, so that the
runs (:mod:`roar.benchmark.runner`, in this process, worker processes or Ray tasks) only read them.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from roar.attribution.compute import compute_ranks, probe_methods, rank_entry_keys
from roar.attribution.store import AttributionStore, checkpoint_sha256
from roar.benchmark.cell import RUNS_DIR, STORE_DIR, _classifier, _finish_loggers, _loggers, _trainer
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.provenance import base_model_training, base_training, refusal
from roar.data.datamodule import ImageDataModule
from roar.epoch_progress import EpochProgress
from roar.fingerprint import differences, fingerprint_key
from roar.models.checkpoint import PROVENANCE_KEY, load_checkpoint, load_classifier, non_finite_parameters, provenance

log = logging.getLogger(__name__)

BASE_CHECKPOINT = "base.ckpt"


def base_checkpoint_path(cfg: BenchmarkConfig, out: Path) -> Path:
    return Path(cfg.base.checkpoint) if cfg.base.checkpoint else out / BASE_CHECKPOINT


def check_user_checkpoint(cfg: BenchmarkConfig, dm: ImageDataModule, out: Path) -> None:
    """A ``base.checkpoint`` of the user's exists, is safe, and fits the config's architecture and the data.

    Called before ``out`` is made too: a missing checkpoint once left a fresh folder holding an empty results.db.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unsafe, of another architecture, not fitting the data, or non-finite weights.
    """
    if not cfg.base.checkpoint:
        return
    path = Path(cfg.base.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"base.checkpoint {path} does not exist; remove base.checkpoint to train a base model into {out}")
    fits = {"arch": cfg.model.get("arch", "small_cnn"), "num_classes": dm.num_classes, "in_chans": dm.in_chans, "image_size": dm.image_size}
    load_classifier(path, **fits)


class BaseModelError(RuntimeError):
    """The base model diverged or stayed at chance: nothing can be ranked with it."""


def min_base_accuracy(cfg: BenchmarkConfig, num_classes: int) -> float:
    """The accuracy a base model must exceed: ``base.min_accuracy``, else chance + 0.05."""
    return cfg.base.min_accuracy if cfg.base.min_accuracy is not None else 1.0 / num_classes + 0.05


def _check_base_model(model: torch.nn.Module, accuracy: float, cfg: BenchmarkConfig, num_classes: int, where: str) -> None:
    bad = non_finite_parameters(model.state_dict())
    if bad or math.isnan(accuracy):  # NaN accuracy is a diverged model too
        raise BaseModelError(
            f"the base model {where} diverged (non-finite weights: {', '.join(bad[:3]) or 'none'}; test accuracy {accuracy}); "
            f"it was not kept. Lower model.lr (now {cfg.model.get('lr', 'the default')}) and run again."
        )
    floor = min_base_accuracy(cfg, num_classes)
    if accuracy <= floor:
        raise BaseModelError(
            f"the base model {where} reached test accuracy {accuracy:.3f}, not above {floor:.3f} (chance is {1 / num_classes:.3f}); "
            "its attributions would rank noise, so it was not kept. Train longer (base.max_epochs), fix model.lr, "
            "or lower base.min_accuracy if this is expected."
        )


def train_base(cfg: BenchmarkConfig, out: Path, progress: bool = True, force: bool = False, say: Callable[[str], None] | None = None) -> Path:
    """Train the base model, or reuse a checkpoint made by exactly these settings; return its path.

    ``<out>/base.ckpt`` records the fingerprint of its training (:func:`base_model_training`) inside
    itself: it is reused only when that matches, refused otherwise (``force`` retrains it). A
    ``base.checkpoint`` of the user's is checked against the config's architecture and the data.
    A base model that diverged or stayed near chance is never kept. ``progress``: Lightning's
    bars; ``say``: where the one line saying what happened goes (nowhere by default). With ``say``
    and without Lightning's bars, a terminal shows one bar over the epochs while the model trains.

    Raises:
        ConfigChangedError: ``<out>/base.ckpt`` was trained with other settings (and not ``force``).
        CheckpointError: a checkpoint that is unsafe, of another architecture, or does not fit the data.
        BaseModelError: the base model diverged or did not learn.
    """
    path = base_checkpoint_path(cfg, out)
    dm = ImageDataModule(**cfg.data)
    arch = cfg.model.get("arch", "small_cnn")
    fits = {"arch": arch, "num_classes": dm.num_classes, "in_chans": dm.in_chans, "image_size": dm.image_size}
    if cfg.base.checkpoint:
        check_user_checkpoint(cfg, dm, out)
        return path
    expected = base_model_training(cfg)
    if path.is_file():
        recorded = (provenance(path) or {}).get("training")
        # roar 0.3 recorded the retrains' epochs too (base_training): such a base model is still this one
        if recorded in (expected, base_training(cfg)):
            load_classifier(path, **fits)
            (say or log.info)(f"base model: reusing {path} (same settings)")
            return path
        if not force:
            changes = differences(recorded, expected) if isinstance(recorded, dict) else ["the checkpoint records no fingerprint (not written by this roar)"]
            raise refusal("the base model", str(path), changes)
        log.info("retraining the base model: %s was trained with other settings", path)
    start = time.perf_counter()
    seed_everything(cfg.base.seed, workers=True, verbose=False)
    model = _classifier(cfg, dm)
    run_dir = out / RUNS_DIR / "base"
    # the settings under ``benchmark``, as in every retrain's run: one W&B column (benchmark.protocol.fill...) for the whole group
    loggers = _loggers(cfg, out, run_dir, "base", "base", {"benchmark": cfg.to_dict(), "mode": "base", "seed": cfg.base.seed})
    trainer = _trainer(cfg, run_dir, logger=loggers, max_epochs=cfg.base.max_epochs, progress=progress)
    if say is not None and not progress:
        trainer.callbacks.append(EpochProgress("base model"))
    failed = True
    try:
        trainer.fit(model, datamodule=dm)
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
        failed = False
    finally:
        _finish_loggers(loggers, failed)
    accuracy = float(metrics["test/acc"])
    _check_base_model(model, accuracy, cfg, dm.num_classes, f"trained for {path}")
    tmp = path.with_suffix(".ckpt.tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    checkpoint = load_checkpoint(tmp)
    checkpoint[PROVENANCE_KEY] = {"training": expected, "arch": arch, "dataset": dm.dataset_id, "test_acc": accuracy}
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written base model that looks usable
    (say or log.info)(f"base model: test acc {accuracy:.3f} after {trainer.current_epoch} epoch{'s' if trainer.current_epoch != 1 else ''} ({time.perf_counter() - start:.1f} s) -> {path}")
    return path


def check_store_matches(store_dir: Path, dm: ImageDataModule) -> None:
    """Refuse an attribution store that holds ranks of another dataset: a wrong --out, most likely."""
    from roar.attribution.store import AttributionStore

    if not store_dir.is_dir():
        return
    for entry in AttributionStore(store_dir).entries():
        theirs = entry.fingerprint.get("dataset", {})
        if theirs.get("source") != dm.dataset_id["source"] or theirs.get("image_size") != dm.dataset_id["image_size"]:
            raise ValueError(
                f"the attribution store {store_dir} holds ranks of dataset {theirs.get('source')!r} at "
                f"{theirs.get('image_size')} px ({entry.path}), but this benchmark is {dm.dataset_id['source']!r} at "
                f"{dm.dataset_id['image_size']} px; use another --out"
            )


def prepare_ranks(
    cfg: BenchmarkConfig, out: Path, base_ckpt: Path, methods: list[str] | None = None, progress: bool = True, say: Callable[[str], None] | None = None
) -> dict[str, dict[str, str]]:
    """Compute (or reuse) every method's ranks of every train and test image, once.

    ``progress``: the store's bars (in a terminal); ``say``: one line per method when it is ready.

    Returns:
        ``{method: {split: store key}}`` of the entries (``{"fresh": "drawn at every read"}`` for
        random masks drawn afresh): part of each retrain's fingerprint.
    """
    dm = ImageDataModule(**cfg.data)
    check_store_matches(out / STORE_DIR, dm)
    arch = cfg.model.get("arch", "small_cnn")
    model = load_classifier(base_ckpt, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size, arch=arch)
    sha = checkpoint_sha256(base_ckpt)
    probe_methods(dm, list(methods or cfg.methods), cfg.method_params, model=model)
    p = cfg.protocol
    keys: dict[str, dict[str, str]] = {}
    stored = {fingerprint_key(entry.fingerprint) for entry in AttributionStore(out / STORE_DIR).entries()}
    for method in methods or cfg.methods:
        if method == "random" and p.random_mask == "fresh":
            keys[method] = {"fresh": "drawn at every read"}
            continue  # drawn afresh at every read: nothing to store
        start = time.perf_counter()
        keys[method] = rank_entry_keys(
            dm, method, checkpoint_sha=sha, method_params=cfg.method_params.get(method, {}), granularity=p.granularity,
            score=p.score, target=p.target, tie_seed=p.tie_seed, batch_size=cfg.attribution_batch_size,
        )  # fmt: skip
        chosen: list[str] = []  # batch_size auto's choice, said on the method's line
        compute_ranks(
            dm, method, out / STORE_DIR, checkpoint=base_ckpt, model=model,
            method_params=cfg.method_params.get(method, {}), granularity=p.granularity, score=p.score,
            target=p.target, tie_seed=p.tie_seed, batch_size=cfg.attribution_batch_size,
            memory_budget=cfg.attribution_memory_budget, device=cfg.attribution_device, progress=progress and sys.stderr.isatty(),
            say=chosen.append if say is not None else None,  # no lines wanted: the logger keeps it
        )  # fmt: skip
        if say is not None and all(key in stored for key in keys[method].values()):  # a resumed grid: said as such
            say(f"ranks of {method}: reused (same base model, parameters and data)")
        elif say is not None:
            say(f"ranks of {method}: ready ({time.perf_counter() - start:.1f} s{''.join(f'; {line}' for line in chosen)})")
    return keys
