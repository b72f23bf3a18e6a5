"""The device attributions are computed on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Read from a config (``data.ranks.device``, ``benchmark.attribution_device``) and checked twice: a
name torch cannot read when the config is read; a CUDA device this machine lacks only when ranks
are computed, since ranks already in the store need no GPU.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str | torch.device, name: str = "device") -> str | torch.device:
    """``auto``, ``cpu``, ``cuda`` or any device torch reads (``cuda:1``), checked when the config is read:
    ``gpu`` was a torch RuntimeError traceback once the ranks were computed (for a grid: after the base model)."""
    if str(device) != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown {name} {device!r}; valid choices: {', '.join(DEVICES)} (or cuda:N)") from None
    return device


class DeviceUnavailableError(ValueError):
    """A CUDA device asked for on a machine where torch sees none: the user's to fix, in one line."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU.

    Raises:
        DeviceUnavailableError: a CUDA device on a machine where torch sees none. It is refused here, when the
            ranks are computed, not when the config is read: ranks already in the store need no GPU.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        # was torch's "Torch not compiled with CUDA enabled" / "no CUDA GPUs are available" traceback
        raise DeviceUnavailableError(f"attribution device {str(device)!r} needs CUDA, but torch sees no CUDA device; use auto (CUDA when there is one) or cpu")
    return resolved
