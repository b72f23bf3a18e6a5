"""Figure 5: what the sanity-check callbacks cost a fit, per validation epoch.

The model-randomisation check of Adebayo et al. (NeurIPS 2018) runs at the end of every
validation epoch: it explains a fixed batch of validation images with the current model and
with copies whose layers are re-initialised one group at a time (cascading, by default), and
compares the maps (Spearman, SSIM, HOG). The data-randomisation check compares the current
model's maps with those of a permuted-label reference model. Here each callback, with its
default settings, is added to a fit of the embedded default (small_cnn on digits, 16 px, batch
64), and the time spent in its ``on_validation_epoch_end`` is set against the whole epoch
(training + validation + the callback). The first epoch is reported apart: the callback then
also picks its fixed batch and describes the layers.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.common import CLOCKS, Settings, median, now, quiet, since
from benchmarks.options import REPEATS_NOTE, bounded
from benchmarks.timers import EpochTimer, trainer_kwargs
from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier

TARGET_NOTE = "no target set; reported as a share of the epoch"


@dataclass(frozen=True)
class Config:
    epochs: int = bounded(2, note="the first is left out as warm-up", default=4)
    image_size: int = bounded(1, default=16)
    batch_size: int = bounded(1, default=64)
    arch: str = "small_cnn"
    repeats: int = bounded(0, note=REPEATS_NOTE, default=0)
    """Fits per callback; 0 uses the run's ``--repeats``."""


PRESETS = {"smoke": Config(epochs=2, image_size=8, batch_size=256), "quick": Config(epochs=2, repeats=1), "full": Config(epochs=4)}


def _timed(hook: Callable[..., Any], log: list[dict[str, float]]) -> Callable[..., Any]:
    @functools.wraps(hook)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now()
        try:
            return hook(*args, **kwargs)
        finally:
            log.append(since(start))

    return wrapper


def _datamodule(cfg: Config) -> ImageDataModule:
    return ImageDataModule(source="digits", image_size=cfg.image_size, batch_size=cfg.batch_size, seed=0)


def _model(dm: ImageDataModule, cfg: Config) -> ImageClassifier:
    return ImageClassifier(
        arch=cfg.arch, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std,
    )  # fmt: skip


def reference_checkpoint(settings: Settings, cfg: Config) -> str:
    """A permuted-label reference for the data check: one epoch on permuted labels, saved."""
    from lightning.pytorch import Trainer, seed_everything

    path = settings.workdir / "sanity-reference.ckpt"
    if not path.is_file():
        seed_everything(1, verbose=False)
        dm = ImageDataModule(source="digits", image_size=cfg.image_size, batch_size=cfg.batch_size, seed=1, label_permutation=True)
        with quiet():
            trainer = Trainer(**trainer_kwargs(settings, max_epochs=1, limit_val_batches=0, default_root_dir=str(settings.workdir)))
            trainer.fit(_model(dm, cfg), datamodule=dm)
            trainer.save_checkpoint(path)
    return str(path)


def fit_with(callback: Any, settings: Settings, cfg: Config) -> dict[str, Any]:
    """Fit with ``callback``; per epoch: callback seconds and whole-epoch seconds, both clocks."""
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(0, verbose=False)
    calls: list[dict[str, float]] = []
    callback.on_validation_epoch_end = _timed(callback.on_validation_epoch_end, calls)
    timer = EpochTimer()
    dm = _datamodule(cfg)
    with quiet():
        trainer = Trainer(**trainer_kwargs(settings, max_epochs=cfg.epochs, callbacks=[timer, callback], default_root_dir=str(settings.workdir)))
        trainer.fit(_model(dm, cfg), datamodule=dm)
    epochs = [{clock: e[clock] + e[f"validation_{clock}"] for clock in CLOCKS} for e in timer.epochs]
    return {"callback": calls, "epoch": epochs}


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or PRESETS[settings.preset]
    try:
        from callbacks import DataRandomizationCheck, ModelRandomizationCheck
    except ImportError as err:  # the callbacks are written by another part of the project
        return {"title": "Sanity callbacks", "status": f"not available: {err}", "meets_target": None, "rows": [], "columns": []}
    makers = {
        "ModelRandomizationCheck()": lambda: ModelRandomizationCheck(),
        "DataRandomizationCheck(reference)": lambda: DataRandomizationCheck(reference_checkpoint=reference_checkpoint(settings, cfg)),
    }
    rows = []
    for name, make in makers.items():
        callback_s: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        epoch_s: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        first: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        repeats = cfg.repeats or settings.repeats
        for repeat in range(repeats):
            print(f"  [sanity] {name}: repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
            measured = fit_with(make(), settings, cfg)
            for clock in CLOCKS:
                first[clock].append(measured["callback"][0][clock] / measured["epoch"][0][clock])
                callback_s[clock] += [c[clock] for c in measured["callback"][1:]]
                epoch_s[clock] += [e[clock] for e in measured["epoch"][1:]]
        fractions = {clock: [c / e for c, e in zip(callback_s[clock], epoch_s[clock], strict=True)] for clock in CLOCKS}
        rows.append({
            "callback": name, "callback_s": median(callback_s[settings.clock]), "epoch_s": median(epoch_s[settings.clock]),
            "fraction": median(fractions[settings.clock]), "fraction_wall": median(fractions["wall"]),
            "first_epoch_fraction": median(first[settings.clock]), "samples": {"callback": callback_s, "epoch": epoch_s},
        })  # fmt: skip
    return {
        "title": "Sanity callbacks: cost per validation epoch (defaults, small_cnn on digits)",
        "target": TARGET_NOTE,
        "meets_target": None,
        "config": {**cfg.__dict__, "repeats": cfg.repeats or settings.repeats},
        "rows": rows,
        "columns": [
            ("callback", "callback (defaults)"), ("callback_s", f"callback s / epoch ({settings.clock})"),
            ("epoch_s", f"epoch s incl. callback ({settings.clock})"), ("fraction", "share of epoch"),
            ("fraction_wall", "share (wall)"), ("first_epoch_fraction", "share, first epoch"),
        ],
    }
