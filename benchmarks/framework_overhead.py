"""Figure 3: what Lightning and the project's module cost over a plain PyTorch training loop.

The same model (:class:`~roar.models.classifier.ImageClassifier`, normalisation layer included)
is trained on the same in-memory tensors with the same batch size, augmentation
(:func:`~roar.data.datamodule.random_crop_flip`), loss, optimiser (SGD, Nesterov momentum,
weight decay on weights only) and per-step learning-rate schedule, three ways:

- ``train.py fit``: the real command (``configs/digits.yaml``) with a CSV logger, checkpointing
  and the learning-rate monitor, progress bar off; validation time is subtracted;
- ``Trainer.fit``: the same module and datamodule under a bare Trainer (no logger, checkpoint,
  progress bar or validation);
- ``plain loop``: ``for idx in randperm(n).split(B): augment, forward, loss, backward, step``.

Start-up is excluded: every run trains a few epochs and only the epochs after the first are
timed (an :class:`~benchmarks.common.EpochTimer` records them for the Lightning runs).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from benchmarks.common import CLOCKS, Settings, median, now, quiet, ratio, since, synchronize
from benchmarks.options import REPEATS_NOTE, bounded
from benchmarks.timers import EpochTimer, trainer_kwargs
from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.15
"""One epoch of train.py fit within 1.15x of the plain loop, on CPU."""


@dataclass(frozen=True)
class Config:
    """Sizes of figure 3: the embedded default fit (digits, 16 px, small_cnn, batch 64)."""

    epochs: int = bounded(2, note="the first is left out as warm-up", default=4)
    image_size: int = bounded(1, default=16)
    batch_size: int = bounded(1, default=64)
    arch: str = "small_cnn"
    lr: float = bounded(0, above=True, default=0.05)
    momentum: float = bounded(0, below=1, default=0.9)
    weight_decay: float = bounded(0, default=5e-4)
    repeats: int = bounded(0, note=REPEATS_NOTE, default=0)
    """Repeats of the three runs; 0 uses the run's ``--repeats``."""


PRESETS = {
    "smoke": Config(epochs=2, image_size=8, batch_size=256),
    "quick": Config(epochs=2, repeats=1),
    "full": Config(epochs=4),
}


def _datamodule(cfg: Config) -> ImageDataModule:
    return ImageDataModule(source="digits", image_size=cfg.image_size, batch_size=cfg.batch_size, val_fraction=0.1, seed=0)


def _model(dm: ImageDataModule, cfg: Config) -> ImageClassifier:
    return ImageClassifier(
        arch=cfg.arch, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std, optimizer="sgd", lr=cfg.lr,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, warmup_epochs=1,
    )  # fmt: skip


def plain_loop(settings: Settings, cfg: Config, seed: int) -> list[dict[str, float]]:
    """Train with a plain PyTorch loop; wall and CPU seconds of each epoch."""
    torch.manual_seed(seed)
    dm = _datamodule(cfg)
    model = _model(dm, cfg).to(settings.device).train()
    images = dm.source.train.images[dm.train_indices].to(settings.device)
    labels = dm.source.train.labels[dm.train_indices].to(settings.device)
    decay = [p for p in model.net.parameters() if p.ndim > 1]
    no_decay = [p for p in model.net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total, warmup = steps_per_epoch * cfg.epochs, steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    epochs = []
    for _ in range(cfg.epochs):
        synchronize(settings.device)
        start = now()
        for idx in torch.randperm(len(images)).split(cfg.batch_size):
            idx = idx.to(settings.device)
            x = dm.augment_batch(images[idx])
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        synchronize(settings.device)
        epochs.append(since(start))
    return epochs


def lightning_fit(settings: Settings, cfg: Config, seed: int) -> list[dict[str, float]]:
    """``Trainer.fit`` of the same module and datamodule, bare Trainer; wall and CPU seconds of each epoch."""
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(seed, verbose=False)
    dm = _datamodule(cfg)
    timer = EpochTimer()
    with quiet():
        trainer = Trainer(**trainer_kwargs(settings, max_epochs=cfg.epochs, limit_val_batches=0, callbacks=[timer]))
        trainer.fit(_model(dm, cfg), datamodule=dm)
    return timer.epochs


def train_py_fit(settings: Settings, cfg: Config, seed: int, workdir: Path) -> list[dict[str, float]]:
    """``train.py fit --config configs/digits.yaml`` with a CSV logger and checkpoints; wall and CPU seconds of each epoch."""
    from train import main

    workdir.mkdir(parents=True, exist_ok=True)
    trainer_file = workdir / "trainer.yaml"
    trainer_file.write_text(yaml.safe_dump({
        "accelerator": settings.accelerator, "devices": 1, "max_epochs": cfg.epochs, "log_every_n_steps": 10,
        "enable_progress_bar": False, "enable_model_summary": False,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(workdir), "name": "fit"}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
            {"class_path": "benchmarks.timers.EpochTimer"},
        ],
    }))  # fmt: skip
    args = [
        "fit", "--config", str(ROOT / "configs" / "digits.yaml"), "--trainer", str(trainer_file),
        "--seed_everything", str(seed), "--test_after_fit", "false",
        "--data.init_args.image_size", str(cfg.image_size), "--data.init_args.batch_size", str(cfg.batch_size),
        "--model.arch", cfg.arch, "--model.lr", str(cfg.lr), "--model.weight_decay", str(cfg.weight_decay),
    ]  # fmt: skip
    with quiet():
        cli = main(args)
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, EpochTimer)).epochs


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    """Alternate the three ways ``settings.repeats`` times; median steady epoch of each."""
    cfg = cfg or PRESETS[settings.preset]
    ways = {
        "train.py fit": lambda seed: train_py_fit(settings, cfg, seed, settings.workdir / f"overhead-{seed}"),
        "Trainer.fit": lambda seed: lightning_fit(settings, cfg, seed),
        "plain loop": lambda seed: plain_loop(settings, cfg, seed),
    }
    epochs: dict[str, dict[str, list[float]]] = {name: {clock: [] for clock in CLOCKS} for name in ways}
    repeats = cfg.repeats or settings.repeats
    for repeat in range(repeats):
        print(f"  [overhead] repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        for name, train in ways.items():
            for epoch in train(repeat)[1:]:  # the first epoch pays for warm-up
                for clock in CLOCKS:
                    epochs[name][clock].append(epoch[clock])
    n = len(_datamodule(cfg).train_indices)
    plain = {clock: median(epochs["plain loop"][clock]) for clock in CLOCKS}
    rows = []
    for name, times in epochs.items():
        epoch_s = {clock: median(times[clock]) for clock in CLOCKS}
        ratios = {clock: ratio(epoch_s[clock], plain[clock]) for clock in CLOCKS}
        r = ratios[settings.clock]
        rows.append({
            "way": name, "epoch_s": epoch_s[settings.clock], "images_per_s": n / epoch_s[settings.clock], "ratio": r,
            "ratio_wall": ratios["wall"], "ratio_cpu": ratios["cpu"],
            "meets_target": None if name == "plain loop" else bool(r <= TARGET), "epoch_times": times,
        })  # fmt: skip
    return {
        "title": "Framework overhead: one training epoch against a plain PyTorch loop",
        "target": f"train.py fit <= {TARGET}x the plain loop (CPU)",
        "meets_target": rows[0]["meets_target"],
        "config": {**cfg.__dict__, "repeats": repeats, "train_images": n, "steps_per_epoch": math.ceil(n / cfg.batch_size)},
        "rows": rows,
        "columns": [
            ("way", "training"), ("epoch_s", f"s / epoch ({settings.clock})"), ("images_per_s", "images / s"),
            ("ratio", f"vs plain ({settings.clock})"), ("ratio_wall", "vs plain (wall)"), ("meets_target", f"<= {TARGET}x"),
        ],
    }
