"""``benchmark.stack``: which retrains of the grid train together, and whether a config allows it.

Hooker et al. (NeurIPS 2019) retrain one architecture per (method, threshold, seed, mode) cell; the
seeds of one cell are stacked side by side (:mod:`roar.benchmark.stacked_runner` trains them). Only
trainer settings the stacked loop reproduces are allowed, so each member equals its run alone.
"""

from __future__ import annotations

from typing import Any

from roar.benchmark.cell import _classifier
from roar.benchmark.plan import RunSpec
from roar.data.datamodule import ImageDataModule

STACK_CHOICES = "a positive integer or 'auto'"
STACKED_MODES = ("reference", "roar", "kar")
AUTO_MAX_PARAMETERS = 5_000_000
"""``auto`` stacks models up to this many parameters (small CNNs, ResNet18); larger ones fill a device alone."""
AUTO_MAX_STACK = 8
# Trainer settings a stacked loop reproduces; any other one (gradient clipping, accumulation,
# limits, precision, callbacks...) changes training in a way this loop does not, so it is refused.
SUPPORTED_TRAINER = {
    "max_epochs", "accelerator", "devices", "log_every_n_steps", "enable_progress_bar", "enable_model_summary",
    "enable_checkpointing", "logger", "default_root_dir", "profiler", "benchmark", "deterministic",
    "num_sanity_val_steps", "check_val_every_n_epoch", "barebones",
}  # fmt: skip


def check_stack_setting(value: Any) -> int | str:
    """``benchmark.stack``: a positive integer or ``auto``; anything else is refused by name."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"benchmark.stack must be {STACK_CHOICES}, got {value!r}")


def unstackable_reason(cfg: Any) -> str | None:
    """Why this config's retrains cannot be stacked exactly, or None when they can."""
    unsupported = sorted(k for k, v in cfg.trainer.items() if k not in SUPPORTED_TRAINER and v is not None)
    if unsupported:
        return f"trainer setting(s) {', '.join(unsupported)} are not reproduced by stacked training (supported: {', '.join(sorted(SUPPORTED_TRAINER))})"
    if cfg.trainer.get("devices", 1) not in (1, "1", None):
        return f"trainer.devices={cfg.trainer['devices']!r}: a stack trains on one device"
    if cfg.trainer.get("accelerator", "auto") not in ("auto", "cpu", "gpu", "cuda"):
        return f"trainer.accelerator={cfg.trainer['accelerator']!r}: a stack runs on cpu or cuda"
    return None


def resolve_stack(cfg: Any, num_parameters: int | None = None) -> int:
    """The number of members per stack: ``benchmark.stack``, or for ``auto`` the number of seeds
    (at most :data:`AUTO_MAX_STACK`) when the model is small, else 1."""
    value = check_stack_setting(getattr(cfg, "stack", 1))
    if value != "auto":
        return int(value)
    if num_parameters is None:
        dm = ImageDataModule(**cfg.data)
        num_parameters = sum(p.numel() for p in _classifier(cfg, dm).net.parameters())
    return max(1, min(len(cfg.seed_list), AUTO_MAX_STACK)) if num_parameters <= AUTO_MAX_PARAMETERS else 1


def stack_groups(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """Retrain specs in groups of ``size``: the seeds of one (mode, fill, method, threshold) cell side by side."""
    order = sorted((s for s in specs if s.mode in STACKED_MODES), key=lambda s: (s.mode, s.fill, s.method, s.threshold, s.seed))
    return [order[i : i + size] for i in range(0, len(order), size)]
