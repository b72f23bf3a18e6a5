"""Figure 6: what the benchmark grids cost in wall time.

Two numbers:

- ``digits demo``: the wall time of ``python -m roar benchmark --config
  configs/benchmark/digits_demo.yaml`` into a fresh folder (base model, every method's ranks,
  every retrain, the report), with ``OMP_NUM_THREADS`` set to the run's ``--threads``. It takes
  minutes, so it runs only with ``--grid``; otherwise it is reported as "not run".
- ``cifar10_resnet50 retrain epoch``: one ROAR retrain of the paper's CIFAR-10 setting (Hooker et
  al. 2019; ``configs/benchmark/cifar10_resnet50.yaml``: ResNet50 with the small-image stem,
  32 px, batch 128, SGD, ROAR at threshold 0.5) through the real ``RoarDataModule`` and
  ``Trainer.fit``, on random CIFAR-shaped images written in the CIFAR-10 format. A few batches
  are timed (the first is a warm-up) and the epoch is **extrapolated** to 50,000 images
  (``ceil(50000 / batch) x`` the median batch time).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CLOCKS, Settings, median, now, quiet, since, write_fake_cifar10
from benchmarks.options import bounded
from benchmarks.timers import BatchTimer, keep_cudnn_benchmark, trainer_kwargs
from roar.attribution import StoreRanks
from roar.data.roar import RoarDataModule
from roar.models.classifier import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
EPOCH_IMAGES = 50_000


@dataclass(frozen=True)
class Config:
    batch_size: int = bounded(1, default=128)
    timed_batches: int = bounded(1, default=2)
    arch: str = "resnet50"
    image_size: int = bounded(1, default=32)


PRESETS = {
    "smoke": Config(batch_size=2, timed_batches=1, arch="resnet18", image_size=16),
    "quick": Config(batch_size=8, timed_batches=2),
    "full": Config(batch_size=128, timed_batches=2),
}


def digits_demo(settings: Settings) -> dict[str, Any]:
    """Run the digits demo grid in a subprocess; its wall time."""
    out = settings.workdir / "digits_demo"
    command = [sys.executable, "-m", "roar", "benchmark", "--config", str(ROOT / "configs/benchmark/digits_demo.yaml"), "--out", str(out)]
    print("  [grid] python -m roar benchmark --config configs/benchmark/digits_demo.yaml (minutes)", file=sys.stderr, flush=True)
    # The child gets the run's thread count too: torch reads OMP_NUM_THREADS at start-up.
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
    start = now()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = since(start)["wall"]  # the work is in the child: only wall time means anything here
    row = {
        "what": f"digits demo grid (python -m roar benchmark, {settings.threads} thread(s))",
        "status": "ok" if done.returncode == 0 else f"failed (exit {done.returncode})",
        "wall_s": seconds,
    }  # fmt: skip
    if done.returncode != 0:
        row["stderr_tail"] = done.stderr[-2000:]
    return row


def resnet50_epoch(settings: Settings, cfg: Config) -> dict[str, Any]:
    """Time a few batches of a ROAR retrain in the CIFAR-10 ResNet50 setting; extrapolate an epoch."""
    from lightning.pytorch import Trainer, seed_everything

    batches = cfg.timed_batches + 1  # the first batch is a warm-up
    n_train = math.ceil(batches * cfg.batch_size / 0.9) + 2  # 10% of the train pool is held out for validation
    root = write_fake_cifar10(settings.workdir / f"fake-cifar10-grid-{n_train}", n_train=n_train, n_test=cfg.batch_size)
    seed_everything(0, verbose=False)
    dm = RoarDataModule(
        source="cifar10", root=str(root), batch_size=cfg.batch_size, image_size=cfg.image_size, val_fraction=0.1, seed=0,
        threshold=0.5, mode="roar", ranks=StoreRanks("random", store=str(settings.workdir / "grid-store"), device=str(settings.device)),
    )  # fmt: skip
    model = ImageClassifier(
        arch=cfg.arch, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=5e-4, warmup_epochs=2, channels_last=True,
    )  # fmt: skip
    # As the config: bf16 autocast on a GPU; full precision on a CPU, where bf16 is rarely faster.
    precision = "bf16-mixed" if settings.device.type == "cuda" else "32-true"
    timer = BatchTimer()
    print(f"  [grid] {cfg.arch} {cfg.image_size}px batch {cfg.batch_size}: {batches} batches", file=sys.stderr, flush=True)
    with quiet(), keep_cudnn_benchmark():
        trainer = Trainer(**trainer_kwargs(
            settings, max_epochs=1, limit_train_batches=batches, limit_val_batches=0, callbacks=[timer],
            precision=precision, benchmark=settings.device.type == "cuda",
        ))  # fmt: skip
        trainer.fit(model, datamodule=dm)
    timed = [b for b in timer.batches(skip_batches=1) if b["size"] == cfg.batch_size]
    per_batch = {clock: median([b[clock] for b in timed]) for clock in CLOCKS}
    steps = math.ceil(EPOCH_IMAGES / cfg.batch_size)
    return {
        "what": f"ROAR retrain epoch, {cfg.arch} {cfg.image_size}px, batch {cfg.batch_size} (extrapolated to {EPOCH_IMAGES:,} images)",
        "status": "extrapolated",
        "s_per_batch": per_batch[settings.clock],
        "images_per_s": cfg.batch_size / per_batch[settings.clock],
        "epoch_s": steps * per_batch[settings.clock],
        "epoch_s_wall": steps * per_batch["wall"],
        "timed_batches": cfg.timed_batches,
        "precision": precision,
        "batch_times": timer.epochs,
    }


def run(settings: Settings, cfg: Config | None = None, grid: bool = False) -> dict[str, Any]:
    cfg = cfg or PRESETS[settings.preset]
    demo = digits_demo(settings) if grid else {"what": "digits demo grid (python -m roar benchmark)", "status": "not run (pass --grid)"}
    rows = [demo, resnet50_epoch(settings, cfg)]
    return {
        "title": "Grid cost: the digits demo, and one CIFAR-10 ResNet50 retrain epoch",
        "target": "none (wall time of the grid; extrapolated epoch time)",
        "meets_target": None,
        "config": {**cfg.__dict__, "epoch_images": EPOCH_IMAGES, "grid": grid},
        "rows": rows,
        "columns": [
            ("what", "what"), ("status", "status"), ("wall_s", "wall s"), ("s_per_batch", f"s / batch ({settings.clock})"),
            ("images_per_s", f"images / s ({settings.clock})"), ("epoch_s", f"s / epoch ({settings.clock})"), ("epoch_s_wall", "s / epoch (wall)"),
        ],
    }
