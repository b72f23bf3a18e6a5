"""Layer groups: the blocks of a network that the sanity checks randomise one at a time.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), section 4, randomise a trained
network "layer by layer"; Binder et al. (arXiv 2211.12486, 2022) do the same from the input up.
Which blocks count as layers is decided here. A "layer group" is a block a user would name: a
top-level child of the network that holds parameters, with ``nn.Sequential``/``nn.ModuleList``
stages expanded one level (so a timm ResNet gives ``conv1, bn1, layer1.0, layer1.1, ..., layer4.1,
fc``). Children are taken in registration order, which is the forward order for every model in
:mod:`roar.models.factory` (and for timm's ResNets); for a model where that is not so, pass
``groups`` explicitly to :func:`roar.sanity.randomization.randomization_steps`.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

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
