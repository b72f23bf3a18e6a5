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

The layer groups are found by :mod:`roar.sanity.layer_groups` and re-initialised by
:mod:`roar.sanity.reinitialization`; this module holds the orders, and re-exports their names.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from roar.sanity.layer_groups import LayerGroup as LayerGroup, describe_layers as describe_layers, layer_groups
from roar.sanity.reinitialization import _check_resettable, group_seed, reinitialize_
from roar.sanity.settings import BATCHNORM_MODES, check_choice

ORDERS = ("cascading", "independent", "bottom_up")
"""Randomisation orders: Adebayo et al. (2018) cascading and independent, Binder et al. (2022) bottom-up."""

ORIGINAL = "original"
"""The ``layer`` of the optional step 0, the unrandomised copy."""


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
