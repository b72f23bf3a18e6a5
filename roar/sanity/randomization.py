"""Model-parameter randomisation for the sanity checks, always on a copy of the model.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), section 4, re-initialise a
trained network's weights layer by layer and watch whether a saliency method's maps change:

- ``cascading``: from the logits down to the input, cumulatively (step 1 randomises the last
  layer group, step 2 the last two, ...);
- ``independent``: one group at a time, every other group keeps its trained weights.

Binder et al., "Shortcomings of Top-Down Randomization-Based Sanity Checks for Evaluations of
Deep Neural Network Explanations" (arXiv 2211.12486, 2022) argue that top-down randomisation
keeps much of the input-side structure of a map, and randomise from the input up instead:

- ``bottom_up``: from the input up to the logits, cumulatively.

A "layer group" is a block a user would name: a top-level child of the network that holds
parameters, with ``nn.Sequential``/``nn.ModuleList`` stages expanded one level (so a timm ResNet
gives ``conv1, bn1, layer1.0, layer1.1, ..., layer4.1, fc``). Children are taken in registration
order, which is the forward order for every model in :mod:`roar.models.factory` (and for
timm's ResNets); for a model where that is not so, pass ``groups`` explicitly.

Re-initialisation uses each layer's own initialiser (``reset_parameters()``), which for
``nn.Conv2d``/``nn.Linear`` is PyTorch's default Kaiming-uniform draw (not timm's init), and for
batch norm sets ``weight = 1``, ``bias = 0`` and resets the running statistics: a randomised batch
norm is reset, not random (``batchnorm="keep_stats"`` keeps the trained running statistics instead,
as Adebayo et al.'s code does; see :mod:`roar.sanity.settings`). Each group's fresh weights depend only on the seed and the group's
name, so a layer gets the same random weights in every order and at every step.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from roar.sanity.settings import BATCHNORM_MODES, check_choice

ORDERS = ("cascading", "independent", "bottom_up")
"""Randomisation orders: Adebayo et al. (2018) cascading and independent, Binder et al. (2022) bottom-up."""

ORIGINAL = "original"
"""The ``layer`` of the optional step 0, the unrandomised copy."""

_EXPANDED_CONTAINERS = (nn.Sequential, nn.ModuleList)


class LayerGroup(NamedTuple):
    """One block that is randomised as a unit.

    Attributes:
        name: the block's name relative to the network (``"layer1.0"``), as a user names it.
        modules: the qualified names of its modules in the model passed in; they differ from
            ``name`` only by the root prefix (``"net.layer1.0"`` for a wrapped network).
    """

    name: str
    modules: list[str]


@dataclass(frozen=True)
class RandomizationStep:
    """One step of a randomisation order.

    Attributes:
        step: 1, 2, ... (0 for the optional unrandomised step).
        layer: the group randomised at this step (``"original"`` at step 0).
        randomized: every group that is randomised in ``model`` at this step, in the order
            they were randomised.
        model: the randomised copy, in eval mode, on the original's device. The same object
            is mutated from step to step: use it (compute the maps) before asking for the next.
            For ``independent``, keep the iterator alive while using the step: closing or
            garbage-collecting it restores the group's trained weights.
    """

    step: int
    layer: str
    randomized: list[str]
    model: nn.Module


def _holds_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return next(module.parameters(recurse=recurse), None) is not None


def _detect_root(model: nn.Module) -> str:
    """Descend through wrappers to the network whose children are the layers.

    A wrapper is a module with no parameters of its own whose parameters all sit in a single
    child, itself without parameters of its own (the project's classifier keeps a parameter-free
    ``normalize`` and the network at ``net``). A single parameter-holding leaf (a linear model's
    ``fc``) is a layer, not a network, so the descent stops above it.
    """
    path: list[str] = []
    module = model
    while not _holds_parameters(module, recurse=False):
        holders = [(n, c) for n, c in module.named_children() if _holds_parameters(c)]
        if len(holders) != 1 or _holds_parameters(holders[0][1], recurse=False):
            break
        name, module = holders[0]
        path.append(name)
    return ".".join(path)


def _resolve_root(model: nn.Module, root: str | None) -> str:
    if root is None:
        return _detect_root(model)
    if root == "":
        return ""
    try:
        model.get_submodule(root)
    except AttributeError:
        children = [n for n, c in model.named_children() if _holds_parameters(c)]
        raise ValueError(
            f"root {root!r} is not a submodule of {type(model).__name__}; "
            f"children holding parameters: {', '.join(children) or '(none)'}"
        ) from None
    return root


def layer_groups(model: nn.Module, root: str | None = None) -> list[LayerGroup]:
    """The model's parameter-holding blocks, ordered from input to output.

    The rule, with no per-model tables: the children of the network (in registration order)
    that hold parameters, with ``nn.Sequential``/``nn.ModuleList`` stages expanded into their
    own parameter-holding children. Parameter-free modules (ReLU, pooling, flatten) are skipped.

    - timm ResNet: ``conv1, bn1, layer1.0, layer1.1, ..., layer4.1, fc`` (resnet18);
    - ``small_cnn``: ``conv1, conv2, conv3, fc1, fc2``; ``mlp``: ``fc1, fc2, fc3``; ``linear``: ``fc``.

    Parameters held directly by the network (not by a child) belong to no group and are never
    randomised.

    Args:
        model: the network, or a wrapper around it (such as the project's classifier, which holds
            the network at ``.net`` after a parameter-free normalisation layer).
        root: where the network sits inside ``model``: ``None`` to detect it (descend through
            modules whose parameters all sit in one child, see :func:`_detect_root`), ``""`` for
            ``model`` itself, or a dotted submodule name such as ``"net"``.

    Returns:
        ``LayerGroup(name, modules)`` tuples; ``name`` is relative to the network, ``modules``
        are qualified names in ``model``.

    Raises:
        ValueError: if ``root`` is not a submodule, or the network holds no parameters.
    """
    root = _resolve_root(model, root)
    network = model.get_submodule(root) if root else model
    prefix = f"{root}." if root else ""
    groups: list[LayerGroup] = []
    for name, child in network.named_children():
        if not _holds_parameters(child):
            continue
        if isinstance(child, _EXPANDED_CONTAINERS):
            for sub_name, sub in child.named_children():
                if _holds_parameters(sub):
                    qualified = f"{name}.{sub_name}"
                    groups.append(LayerGroup(qualified, [prefix + qualified]))
        else:
            groups.append(LayerGroup(name, [prefix + name]))
    if not groups:
        raise ValueError(f"{type(network).__name__} has no child modules holding parameters to randomise")
    return groups


def describe_layers(model: nn.Module, root: str | None = None) -> list[str]:
    """One human-readable line per layer group, input to output, for logging.

    Example line: ``"layer1.0: BasicBlock, 73,984 parameters"``.
    """
    lines = []
    for group in layer_groups(model, root):
        modules = [model.get_submodule(m) for m in group.modules]
        count = sum(p.numel() for m in modules for p in m.parameters())
        kinds = "+".join(type(m).__name__ for m in modules)
        lines.append(f"{group.name}: {kinds}, {count:,} parameters")
    return lines


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


def _ordered_groups(groups: Sequence[LayerGroup], order: str) -> list[LayerGroup]:
    if order not in ORDERS:
        raise ValueError(f"unknown randomisation order {order!r}; valid orders: {', '.join(ORDERS)}")
    # Independent steps go top-down too, so their curves share the cascading x-axis (Adebayo et al. 2018, fig. 4).
    return list(groups) if order == "bottom_up" else list(reversed(groups))


def randomization_steps(
    model: nn.Module,
    order: str,
    seed: int = 0,
    *,
    root: str | None = None,
    groups: Sequence[LayerGroup] | None = None,
    include_original: bool = False,
    batchnorm: str = "reset",
) -> Iterator[RandomizationStep]:
    """Randomise a copy of ``model`` group by group; the original is never touched.

    The model is deep-copied once (on its device, in eval mode). The cumulative orders
    (``cascading``, ``bottom_up``) re-initialise one more group of that copy at each step;
    ``independent`` re-initialises one group, and puts its trained state back before the next
    step (also if the caller stops early), so no second full copy is made.

    Args:
        model: the trained model (or a wrapper around it; see :func:`layer_groups`).
        order: one of :data:`ORDERS`. ``cascading`` and ``independent`` go from the logits down
            to the input, ``bottom_up`` from the input up.
        seed: non-negative seed; each group is re-initialised with :func:`group_seed`.
        root: where the network sits in ``model`` (see :func:`layer_groups`).
        groups: the layer groups to use instead of :func:`layer_groups` (input to output).
        include_original: first yield step 0, the unrandomised copy, with ``layer="original"``.
        batchnorm: ``reset`` or ``keep_stats`` (see :func:`reinitialize_`).

    Yields:
        :class:`RandomizationStep` for each group. The yielded ``model`` is one object, changed
        in place between steps.

    Raises:
        ValueError: for an unknown order, a bad seed or root, or a layer without an initialiser.
    """
    check_choice("batchnorm", batchnorm, BATCHNORM_MODES)
    groups = list(layer_groups(model, root) if groups is None else groups)
    ordered = _ordered_groups(groups, order)
    seeds = {g.name: group_seed(seed, g.name) for g in ordered}
    for group in ordered:
        for name in group.modules:
            _check_resettable(model.get_submodule(name))
    return _steps(model, order, ordered, seeds, include_original, batchnorm)


def _steps(
    model: nn.Module, order: str, ordered: list[LayerGroup], seeds: dict[str, int], include_original: bool, batchnorm: str
) -> Iterator[RandomizationStep]:
    randomized_copy = copy.deepcopy(model).eval()
    if include_original:
        yield RandomizationStep(0, ORIGINAL, [], randomized_copy)
    done: list[str] = []
    for step, group in enumerate(ordered, start=1):
        modules = [randomized_copy.get_submodule(name) for name in group.modules]
        if order == "independent":
            saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
            reinitialize_(modules, seeds[group.name], batchnorm)
            try:
                yield RandomizationStep(step, group.name, [group.name], randomized_copy)
            finally:
                for module, state in zip(modules, saved):
                    module.load_state_dict(state)
        else:
            reinitialize_(modules, seeds[group.name], batchnorm)
            done.append(group.name)
            yield RandomizationStep(step, group.name, list(done), randomized_copy)
