"""A GPU-only trainer setting on a machine without one: refused up front, in one line.

The paper-scale configs (Hooker et al., NeurIPS 2019: ResNet-50 on CIFAR-10 and ImageNet) and the
README's GPU commands name ``trainer.accelerator gpu``. On a machine where torch sees no GPU,
Lightning refuses it only when the first ``Trainer`` is built (for the benchmark, after the data is
loaded), as a ``MisconfigurationException`` traceback ending "No supported gpu backend found!".
``accelerator: auto`` (the shipped configs' choice) is never refused: it falls back to the CPU.
"""

from __future__ import annotations

from typing import Any

GPU_ACCELERATORS = ("gpu", "cuda")


def gpu_accelerator_problem(trainer: dict[str, Any] | Any) -> str | None:
    """Why ``trainer``'s ``accelerator`` cannot run here, or ``None`` when it can (or is not a GPU one)."""
    accelerator = trainer.get("accelerator") if hasattr(trainer, "get") else None
    if not isinstance(accelerator, str) or accelerator.lower() not in GPU_ACCELERATORS:
        return None
    import torch

    if torch.cuda.is_available() or (accelerator.lower() == "gpu" and torch.backends.mps.is_available()):
        return None
    return (
        f"trainer.accelerator {accelerator!r} needs a GPU, but torch sees none (torch.cuda.is_available() is False); "
        "use --trainer.accelerator auto (a GPU when there is one, else the CPU) or cpu"
    )
