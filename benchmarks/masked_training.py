"""Figure 2: the speed of a ROAR retrain against the same training on unmasked data.

ROAR (Hooker et al., NeurIPS 2019) retrains a model from scratch on images whose most important
features are replaced by the channel mean. Here the masks are looked up on the device, batch by
batch, from ranks precomputed once (:class:`~roar.data.roar.RoarDataModule`), so a retrain
should train as fast as an ordinary fit. Ranks are those of the ``random`` baseline in a
temporary store (no base model needed); threshold 0.5, ROAR mode; the model, batch size,
epochs and augmentation are the same on both sides; everything runs through ``Trainer.fit``.

Three measurements per dataset:

- *alternating batches* (the verdict): one fit whose datamodule masks every other training
  batch; the masked batches' images/s over the unmasked batches' images/s. Both kinds of batch
  run interleaved in the same process, so the load of a shared machine falls on both alike;
- *separate fits*: a fit with ``RoarDataModule`` against a fit with the plain
  :class:`~roar.data.datamodule.ImageDataModule`, back to back, per repeat. This is the literal
  comparison, but on a shared machine its noise (several %) exceeds the effect being measured;
- *mask cost*: ``RoarDataModule.mask`` on one batch, timed directly, and its share of a step.

A batch is timed from the end of the previous batch to its own end, so it carries its own
loading, masking, augmentation and step; the first epoch (warm-up) is left out. Two datasets:
the embedded digits (1 x 16 x 16, small_cnn, batch 64) and CIFAR-shaped random images through
the real ``cifar10`` source (3 x 32 x 32, small_cnn, batch 128). A cheap model makes the masking's
share larger: small_cnn is the hard case.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import CLOCKS, Settings, interleaved, median, quiet, ratio, write_fake_cifar10
from benchmarks.options import REPEATS_NOTE, bounded
from benchmarks.timers import BatchTimer, trainer_kwargs
from roar.attribution import StoreRanks
from roar.data.datamodule import ImageDataModule
from roar.data.roar import RoarDataModule
from roar.models.classifier import ImageClassifier

TARGET = 0.95
"""Masked training at >= 0.95x the unmasked images/s."""


@dataclass(frozen=True)
class Case:
    """One dataset/model setting."""

    name: str
    source: str
    image_size: int = bounded(1)
    batch_size: int = bounded(1)
    arch: str = "small_cnn"
    n_train: int = bounded(0, default=0)
    """For the fake CIFAR-10 source: images written (0 for other sources)."""


@dataclass(frozen=True)
class Config:
    cases: tuple[Case, ...]
    epochs: int = bounded(2, note="the first is left out as warm-up", default=3)
    threshold: float = bounded(0, below=1, default=0.5)
    method: str = "random"
    repeats: int = bounded(0, note=REPEATS_NOTE, default=0)
    """Repeats per case; 0 uses the run's ``--repeats``."""


PRESETS = {
    "smoke": Config(cases=(Case("digits", "digits", 8, 256),), epochs=2),
    "quick": Config(cases=(Case("digits", "digits", 16, 64),), epochs=2, repeats=1),
    "full": Config(cases=(Case("digits", "digits", 16, 64), Case("cifar-shaped", "cifar10", 32, 128, n_train=768)), epochs=2),
}


def _datamodule(case: Case, settings: Settings, masked: bool, cfg: Config, alternating: bool = False) -> ImageDataModule:
    common: dict[str, Any] = {"source": case.source, "image_size": case.image_size, "batch_size": case.batch_size, "seed": 0}
    if case.source == "cifar10":
        root = settings.workdir / f"fake-cifar10-{case.n_train}"
        if not (root / "cifar-10-batches-py").is_dir():
            write_fake_cifar10(root, n_train=case.n_train, n_test=max(10, case.n_train // 5))
        common["root"] = str(root)
    if not masked:
        return ImageDataModule(**common)
    return (AlternatingRoarDataModule if alternating else RoarDataModule)(
        **common, threshold=cfg.threshold, mode="roar",
        ranks=StoreRanks(cfg.method, store=str(settings.workdir / "masked-store"), device=str(settings.device)),
    )  # fmt: skip


class AlternatingRoarDataModule(RoarDataModule):
    """A :class:`RoarDataModule` that masks every other training batch and leaves the rest as is.

    One fit then holds masked and unmasked batches side by side, under the same load, allocator
    and model state: the pairing a shared machine needs to see a 1% effect. ``masked_flags``
    records, per training batch in order, whether it was masked.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.masked_flags: list[bool] = []

    def mask(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training:
            return super().mask(images, indices)
        masked = len(self.masked_flags) % 2 == 0
        self.masked_flags.append(masked)
        return super().mask(images, indices) if masked else images


def _fit(case: Case, settings: Settings, dm: ImageDataModule, cfg: Config) -> BatchTimer:
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(0, verbose=False)
    model = ImageClassifier(
        arch=case.arch, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std,
    )  # fmt: skip
    timer = BatchTimer()
    with quiet():
        trainer = Trainer(**trainer_kwargs(settings, max_epochs=cfg.epochs, limit_val_batches=0, callbacks=[timer]))
        trainer.fit(model, datamodule=dm)
    return timer


def _speeds(batches: list[dict[str, float]], batch_size: int) -> dict[str, list[float]]:
    """images/s of each full batch, per clock (a last, partial batch is left out)."""
    return {clock: [b["size"] / b[clock] for b in batches if b["size"] == batch_size] for clock in CLOCKS}


def separate_fits(case: Case, settings: Settings, cfg: Config, masked: bool) -> dict[str, list[float]]:
    """One fit, masked (RoarDataModule) or not (ImageDataModule): images/s of its batches after epoch 1."""
    timer = _fit(case, settings, _datamodule(case, settings, masked, cfg), cfg)
    return _speeds(timer.batches(skip_epochs=1), case.batch_size)


def alternating_fit(case: Case, settings: Settings, cfg: Config) -> dict[str, dict[str, list[float]]]:
    """One fit masking every other batch: images/s of its masked and of its unmasked batches."""
    dm = _datamodule(case, settings, True, cfg, alternating=True)
    timer = _fit(case, settings, dm, cfg)
    flags = iter(dm.masked_flags)
    tagged = [(next(flags), batch) for epoch in timer.epochs for batch in epoch]
    first_epoch = len(timer.epochs[0]) if len(timer.epochs) > 1 else 0
    tagged = tagged[first_epoch:]
    return {
        side: _speeds([batch for masked, batch in tagged if masked == (side == "masked")], case.batch_size)
        for side in ("masked", "unmasked")
    }


def masking_cost(case: Case, settings: Settings, cfg: Config) -> dict[str, float]:
    """Seconds per batch of the masking step alone (``RoarDataModule.mask``), timed directly.

    Not a ratio of two noisy measurements but the cost itself: an upper bound on what masking
    can take from a step, which the fit ratios should agree with up to noise.
    """
    dm = _datamodule(case, settings, True, cfg)
    with quiet():
        dm.prepare_data()
        dm.setup("fit")
    images, _, indices = next(iter(dm.train_dataloader()))
    images, indices = images.to(settings.device), indices.to(settings.device)
    times = interleaved({"mask": lambda: dm.mask(images, indices)}, settings.repeats, settings.device, min_seconds=0.2, max_rounds=200)
    return {clock: median(times["mask"][clock]) for clock in CLOCKS}


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    """Per case and repeat: an alternating fit, then a masked and an unmasked fit back to back.

    ``ratio`` (the verdict) is the median over repeats of masked / unmasked images/s of the
    alternating fit's batches. ``ratio_separate`` is the same from separate fits: the two fits of
    a repeat run back to back and their ratio is taken per repeat, then the median over repeats.
    """
    cfg = cfg or PRESETS[settings.preset]
    rows = []
    for case in cfg.cases:
        sides = ("masked", "unmasked")
        separate: dict[str, dict[str, list[float]]] = {side: {clock: [] for clock in CLOCKS} for side in sides}
        alternating: dict[str, dict[str, list[float]]] = {side: {clock: [] for clock in CLOCKS} for side in sides}
        pair_ratios: dict[str, dict[str, list[float]]] = {kind: {clock: [] for clock in CLOCKS} for kind in ("alternating", "separate")}
        repeats = cfg.repeats or settings.repeats
        for repeat in range(repeats):
            print(f"  [masked] {case.name}: repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
            measured = {"alternating": alternating_fit(case, settings, cfg), "separate": {}}
            for side in sides if repeat % 2 == 0 else sides[::-1]:
                measured["separate"][side] = separate_fits(case, settings, cfg, side == "masked")
            for kind, store in (("alternating", alternating), ("separate", separate)):
                for clock in CLOCKS:
                    for side in sides:
                        store[side][clock] += measured[kind][side][clock]
                    pair_ratios[kind][clock].append(ratio(median(measured[kind]["masked"][clock]), median(measured[kind]["unmasked"][clock])))
        ratios = {kind: {clock: median(pair_ratios[kind][clock]) for clock in CLOCKS} for kind in pair_ratios}
        unmasked_ips = median(separate["unmasked"][settings.clock])
        mask_s = masking_cost(case, settings, cfg)
        r = ratios["alternating"][settings.clock]
        rows.append({
            "case": case.name, "shape": f"{'1' if case.source == 'digits' else '3'}x{case.image_size}x{case.image_size}",
            "arch": case.arch, "batch_size": case.batch_size,
            "masked_images_per_s": median(separate["masked"][settings.clock]), "unmasked_images_per_s": unmasked_ips,
            "ratio": r, "ratio_wall": ratios["alternating"]["wall"], "ratio_cpu": ratios["alternating"]["cpu"],
            "ratio_separate": ratios["separate"][settings.clock], "ratio_separate_wall": ratios["separate"]["wall"],
            "meets_target": bool(r >= TARGET),
            "mask_ms_per_batch": 1000 * mask_s[settings.clock], "mask_share_of_step": mask_s[settings.clock] * unmasked_ips / case.batch_size,
            "pair_ratios": pair_ratios, "images_per_s": {"separate": separate, "alternating": alternating},
        })  # fmt: skip
    return {
        "title": "Masked (ROAR) training against unmasked training",
        "target": f"masked images/s >= {TARGET}x unmasked",
        "meets_target": all(row["meets_target"] for row in rows),
        "config": {"epochs": cfg.epochs, "threshold": cfg.threshold, "method": cfg.method, "mode": "roar", "repeats": cfg.repeats or settings.repeats},
        "rows": rows,
        "columns": [
            ("case", "data"), ("shape", "image"), ("arch", "model"), ("batch_size", "B"),
            ("masked_images_per_s", f"masked img/s ({settings.clock})"), ("unmasked_images_per_s", f"unmasked img/s ({settings.clock})"),
            ("ratio", f"ratio, alternating batches ({settings.clock})"), ("ratio_separate", f"ratio, separate fits ({settings.clock})"),
            ("ratio_separate_wall", "separate fits (wall)"), ("meets_target", f">= {TARGET}x"),
            ("mask_ms_per_batch", "mask ms / batch"), ("mask_share_of_step", "mask / step"),
        ],
    }
