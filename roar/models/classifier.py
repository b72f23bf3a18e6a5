"""The LightningModule every fit trains: base models, ROAR/KAR retrains, permuted-label models."""

from __future__ import annotations

import math
import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from roar.models.factory import build_model, check_arch

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("cross_entropy", "least_squares")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile``'s modes; ``compile: true`` is ``default``."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""The modes that replay CUDA graphs. On an H100 a CIFAR ResNet50 step is launch-bound without them:
figure 11 (benchmarks/RESULTS.md) measured ``reduce-overhead`` at 2.3x eager's images/s, ``default`` at 0.7x."""


class Normalize(nn.Module):
    """Per-channel standardisation as the network's first layer.

    Keeping it inside the model means images, attributions and masks all live in ``[0, 1]``
    pixel space, the masked value (the channel mean) maps to exactly 0, and a checkpoint
    carries the statistics it was trained with.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"channel_mean has {len(mean)} values but channel_std has {len(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageClassifier(LightningModule):
    """Cross-entropy classifier with torchmetrics accuracy and a warm-up + cosine schedule.

    Args:
        arch: the network: a registered name (:func:`roar.models.list_models`), ``timm/<name>``
            (any timm model) or ``package.module.Class`` (any ``nn.Module``); see
            :mod:`roar.models.factory`.
        num_classes: output classes (linked from the datamodule).
        in_chans: input channels (linked from the datamodule).
        image_size: input side in pixels (linked from the datamodule).
        channel_mean: per-channel training mean (linked from the datamodule).
        channel_std: per-channel training std (linked from the datamodule).
        optimizer: ``sgd`` (with momentum, Nesterov) or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        warmup_epochs: linear warm-up length, in epochs (fractional allowed).
        label_smoothing: cross-entropy label smoothing.
        loss: ``cross_entropy``, or ``least_squares`` regression of the logits onto one-hot targets
            (the linear least-squares model of the synthetic benchmark, Hooker et al. 2019).
        compile: wrap the network with ``torch.compile``: ``true`` (its ``default`` mode) or a mode
            name (:data:`COMPILE_MODES`). On a GPU, ``reduce-overhead`` (CUDA graphs) is the one
            that pays for small images, where launching kernels, not running them, bounds a step.
        channels_last: use the channels-last memory format (faster convolutions on GPU).
        arch_args: further arguments of the network's constructor (e.g. ``{drop_rate: 0.1}`` for
            a timm model, or a class path's own arguments).
        weights: start from this local weights file (a ``state_dict``; a checkpoint's is taken),
            read with ``weights_only=True``; a classification head of another shape is left
            freshly initialised (fine-tuning an ImageNet model). Only a fresh model reads it:
            loading a checkpoint restores the checkpoint's own weights.
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_chans: int = 3,
        image_size: int = 32,
        channel_mean: list[float] | None = None,
        channel_std: list[float] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
        loss: Literal["cross_entropy", "least_squares"] = "cross_entropy",
        compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False,
        channels_last: bool = False,
        arch_args: dict[str, Any] | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        check_arch(arch)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not isinstance(compile, bool) and compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}; valid choices: true, false, {', '.join(COMPILE_MODES)}")
        # refused here, before the data is loaded: torch refused label_smoothing 1.5 and a negative momentum
        # with a traceback at the first step, and took a negative weight decay (on a param group) silently
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        for name, value in (("momentum", momentum), ("weight_decay", weight_decay), ("warmup_epochs", warmup_epochs)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters()
        mean = channel_mean if channel_mean is not None else [0.0] * in_chans
        std = channel_std if channel_std is not None else [1.0] * in_chans
        if len(mean) != in_chans:
            raise ValueError(f"channel_mean has {len(mean)} values for in_chans={in_chans}")
        self.normalize = Normalize(mean, std)
        self.net = build_model(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size, **(arch_args or {}))
        if weights:
            from roar.models.checkpoint import load_weights

            fresh = load_weights(self.net, weights)
            log.info("model starts from %s%s", weights, f" (head {', '.join(fresh)} freshly initialised)" if fresh else "")
        # Kept out of the module tree so the state_dict has one copy of the weights.
        mode = "default" if compile is True else compile or None
        object.__setattr__(self, "_compiled", torch.compile(self.net, mode=mode) if mode else None)
        # CUDA graphs overwrite a step's outputs at the next replay: each forward starts a new step
        self._marks_steps = mode in CUDA_GRAPH_MODES
        # Lightning's model summary (train.py fit) measures sizes and FLOPs on it; without it, "Total FLOPs: 0".
        # Not under compile: the summary's batch of one compiled the network once more (fit 58 s, not 21 s on digits)
        if not compile:
            self.example_input_array = torch.zeros(1, in_chans, image_size, image_size)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is None:
            return self.net(x)
        if self._marks_steps:
            torch.compiler.cudagraph_mark_step_begin()
        return self._compiled(x)

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _step(self, batch: tuple[torch.Tensor, ...], split: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        if self.hparams.loss == "least_squares":
            loss = F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if split == "train" else 0.0)
        metric = getattr(self, f"{split}_acc")
        # update, not forward: accuracy is logged per epoch only, and forward also computes the batch's
        # value (117 aten ops a step against 42). A launch-bound GPU step pays for every one of them.
        metric.update(logits.detach(), labels)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=split != "test", batch_size=len(labels), sync_dist=not on_step)
        self.log(f"{split}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self):
        total = max(1, int(self.trainer.estimated_stepping_batches))
        optimizer, scheduler = build_optimizer(self.net.named_parameters(), self.hparams, total, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_optimizer(named_parameters, hp: Any, total_steps: int, max_epochs: int | None, member_dims: int = 0):
    """The optimiser and per-step warm-up + cosine schedule of every training (one definition).

    ``member_dims`` leading dimensions of each parameter index stacked models
    (:mod:`roar.models.stacked`): a parameter's own rank decides its weight decay group, so a
    stack of models gets exactly the groups, and (elementwise SGD/AdamW) the updates, of each alone.
    """
    decay, no_decay = [], []
    for name, param in named_parameters:
        # Weight decay on biases and norm scales only hurts (Goyal et al. 2017).
        (no_decay if param.ndim - member_dims <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if hp.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
    total = max(1, int(total_steps))
    epochs = max(1, max_epochs or 1)
    warmup = min(total - 1, int(round(hp.warmup_epochs * total / epochs)))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
