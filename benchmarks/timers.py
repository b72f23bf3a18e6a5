"""Lightning callbacks that time training epochs and batches, and a quiet Trainer configuration.

Kept apart from :mod:`benchmarks.common` so that the store's measurement subprocess does not
import Lightning (seconds of start-up on a busy machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import Callback

from benchmarks.common import CLOCKS, Settings, now, since, synchronize


class EpochTimer(Callback):
    """Wall and CPU time and images of each training epoch, validation excluded.

    Lightning 2 runs the validation loop inside the training epoch (before
    ``on_train_epoch_end``), so its time is measured and subtracted. Start-up (``setup``,
    ``prepare_data``, the sanity check) happens before the first ``on_train_epoch_start`` and is
    never counted.

    Attributes:
        epochs: one ``{"wall", "cpu", "validation_wall", "validation_cpu", "images", "batches"}``
            per epoch; ``wall``/``cpu`` exclude the validation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[dict[str, float]] = []
        self._start: dict[str, float] = {}
        self._val_start: dict[str, float] = {}
        self._val = dict.fromkeys(CLOCKS, 0.0)
        self._images = 0
        self._batches = 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._images = self._batches = 0
        self._val = dict.fromkeys(CLOCKS, 0.0)
        synchronize(pl_module.device)
        self._start = now()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._images += len(batch[1])
        self._batches += 1

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        synchronize(pl_module.device)
        self._val_start = now()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        synchronize(pl_module.device)
        if self._val_start:
            for clock, seconds in since(self._val_start).items():
                self._val[clock] += seconds

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        synchronize(pl_module.device)
        total = since(self._start)
        self.epochs.append({
            **{clock: total[clock] - self._val[clock] for clock in CLOCKS},
            **{f"validation_{clock}": self._val[clock] for clock in CLOCKS},
            "images": self._images, "batches": self._batches,
        })  # fmt: skip


class BatchTimer(Callback):
    """Wall and CPU time of each training batch, from the end of the previous one to its own end.

    Lightning fetches a batch, moves it to the device and calls ``on_after_batch_transfer``
    (where ROAR masking and augmentation happen) *before* ``on_train_batch_start``; timing end to
    end therefore charges a batch with its own loading, masking and step. The first batch of an
    epoch starts at ``on_train_epoch_start``. Epochs are kept apart.

    Attributes:
        epochs: per epoch, a list of ``{"wall", "cpu", "size"}``, one per batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[list[dict[str, float]]] = []
        self._last: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epochs.append([])
        synchronize(pl_module.device)
        self._last = now()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        synchronize(pl_module.device)
        end = now()
        self.epochs[-1].append({**{clock: end[clock] - self._last[clock] for clock in CLOCKS}, "size": len(batch[1])})
        self._last = end

    def batches(self, skip_epochs: int = 0, skip_batches: int = 0) -> list[dict[str, float]]:
        """The batches after the first ``skip_epochs`` epochs and, within the rest, all but the
        first ``skip_batches`` of the first remaining epoch (warm-up)."""
        kept = self.epochs[skip_epochs:] if len(self.epochs) > skip_epochs else self.epochs[-1:]
        flat = [batch for epoch in kept for batch in epoch]
        return flat[skip_batches:] if len(flat) > skip_batches else flat[-1:]


def trainer_kwargs(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A quiet Trainer: no logger, checkpoints, progress bar or summary, unless overridden."""
    kwargs: dict[str, Any] = {
        "accelerator": settings.accelerator,
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": False,
    }
    kwargs.update(overrides)
    return kwargs


@contextlib.contextmanager
def keep_cudnn_benchmark() -> Iterator[None]:
    """``Trainer(benchmark=...)`` sets ``torch.backends.cudnn.benchmark`` for the whole process:
    put it back, so a figure's autotuning does not leak into the figures after it."""
    before = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
