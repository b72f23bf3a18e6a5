"""Re-initialising layers in place, reproducibly: the randomisation of the sanity checks.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), section 4, replace a trained
layer's weights with fresh random ones. Here that uses each layer's own initialiser
(``reset_parameters()``), which for ``nn.Conv2d``/``nn.Linear`` is PyTorch's default
Kaiming-uniform draw (not timm's init), and for batch norm sets ``weight = 1``, ``bias = 0`` and
resets the running statistics: a randomised batch norm is reset, not random
(``batchnorm="keep_stats"`` keeps the trained running statistics instead, as Adebayo et al.'s code
does; see :mod:`roar.sanity.settings`). Each group's fresh weights depend only on the seed and the
group's name (:func:`group_seed`), so a layer gets the same random weights in every order and at
every step. A module whose parameters no ``reset_parameters()`` covers is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from roar.sanity.layer_groups import _holds_parameters
from roar.sanity.settings import BATCHNORM_MODES, check_choice


def _check_resettable(module: nn.Module) -> None:
    """Refuse a module whose parameters no ``reset_parameters`` would touch.

    A silently unrandomised layer would make the sanity check pass or fail for the wrong reason.
    """
    missing = []

    def visit(m: nn.Module, name: str, covered: bool) -> None:
        covered = covered or callable(getattr(m, "reset_parameters", None))
        if _holds_parameters(m, recurse=False) and not covered:
            missing.append(f"{name or '(root)'} ({type(m).__name__})")
        for child_name, child in m.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name, covered)

    visit(module, "", False)
    if missing:
        raise ValueError(
            f"cannot re-initialise {type(module).__name__}: these modules hold parameters but have no "
            f"reset_parameters(): {', '.join(missing)}"
        )


def reinitialize_(modules: nn.Module | Iterable[nn.Module], generator_seed: int, batchnorm: str = "reset") -> None:
    """Re-initialise modules in place with their own initialisers, reproducibly.

    Calls ``reset_parameters()`` on every submodule that has it (which, for batch norm, also
    resets the running statistics unless ``batchnorm="keep_stats"``), under a forked RNG seeded with ``generator_seed``: the
    result depends only on the seed (and device), and the global RNG state is left as it was.
    CPU and the CUDA devices the modules live on are forked and seeded.

    Args:
        modules: a module or modules to re-initialise in place.
        generator_seed: a non-negative integer seed.
        batchnorm: ``reset`` (the running statistics too) or ``keep_stats`` (the trainable
            scale and shift only, as Adebayo et al.'s code re-initialises trainable variables only).

    Raises:
        ValueError: for a negative or non-integer seed, an unknown ``batchnorm``, or a module
            holding parameters that no ``reset_parameters()`` covers.
    """
    check_choice("batchnorm", batchnorm, BATCHNORM_MODES)
    if not isinstance(generator_seed, (int, np.integer)) or isinstance(generator_seed, bool) or generator_seed < 0:
        raise ValueError(f"generator_seed must be a non-negative integer, got {generator_seed!r}")
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    for module in modules:
        _check_resettable(module)
    cuda_devices = sorted(
        {t.device.index or 0 for m in modules for t in [*m.parameters(), *m.buffers()] if t.device.type == "cuda"}
    )
    # Forking only the generators that are seeded keeps every other RNG untouched
    # (torch.manual_seed would also reseed CUDA devices that fork_rng does not restore).
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(int(generator_seed))
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(int(generator_seed))
        with torch.no_grad():
            for module in modules:
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if not callable(reset):
                        continue
                    kept = _running_stats(sub) if batchnorm == "keep_stats" else {}
                    reset()
                    for name, value in kept.items():
                        getattr(sub, name).copy_(value)


def _running_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of a batch norm's running statistics (none for any other module)."""
    if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.track_running_stats:
        return {}
    return {n: getattr(module, n).clone() for n in ("running_mean", "running_var", "num_batches_tracked")}


def group_seed(seed: int, group_name: str) -> int:
    """The seed a group is re-initialised with: a mix of the run seed and the group's name.

    Tied to the name (not the step), so a layer gets the same random weights in every order.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    mixed = np.random.SeedSequence([int(seed), zlib.crc32(group_name.encode())]).generate_state(1)
    return int(mixed[0])
