"""What the sanity checks explain and how: the network, a fixed batch, the methods, their maps and the target.

Adebayo et al. (NeurIPS 2018) compare maps of one fixed batch across models; every map here is
made on a copy of the network, for all images at once, and compared by :mod:`roar.sanity.similarity`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from roar.attribution import AttributionMethod, get_method, resolve_target
from roar.attribution.registry import accepted_params, needs_model
from roar.sanity.arguments import check_target
from roar.sanity.settings import SanitySettings, as_settings
from roar.sanity.similarity import compare_maps


class NormalizedNetwork(nn.Module):
    """``net(normalize(x))``: a classifier's network without the LightningModule around it.

    Module names match :class:`roar.models.classifier.ImageClassifier` (``normalize``, ``net``),
    so a layer name such as ``net.conv3`` means the same in both.
    """

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def explained_network(module: nn.Module) -> nn.Module:
    """What the sanity checks explain and randomise: ``net(normalize(x))`` where the module has
    both (the project's classifier), else the module itself.

    Leaving the LightningModule out keeps its trainer, metrics and compiled wrapper out of every
    copy the checks make. The returned wrapper shares the module's submodules: copy it before
    changing anything.
    """
    net, normalize = getattr(module, "net", None), getattr(module, "normalize", None)
    if isinstance(net, nn.Module) and isinstance(normalize, nn.Module):
        return NormalizedNetwork(normalize, net)
    return module


def select_batch(
    dataset: Dataset, num_images: int, seed: int = 0, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed, seeded choice of images from a dataset, as one batch.

    Args:
        dataset: yields ``(image, label)`` or ``(image, label, index)`` (the project's datamodule
            yields the global sample index; without one, the position in ``dataset`` is used).
        num_images: how many images (all of them when the dataset is smaller).
        seed: seeds the choice; the chosen positions are sorted, so the batch is the same
            whatever the order of the draw.
        device: where to put the batch.

    Returns:
        ``(images (B, C, H, W) float, labels (B,) long, indices (B,) long)``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    size = len(dataset)
    if size == 0:
        raise ValueError("cannot pick sanity-check images from an empty dataset")
    generator = torch.Generator().manual_seed(int(seed))
    positions = torch.randperm(size, generator=generator)[: min(num_images, size)].sort().values.tolist()
    items = [dataset[p] for p in positions]
    images = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    indices = torch.as_tensor([int(item[2]) if len(item) > 2 else p for item, p in zip(items, positions)], dtype=torch.long)
    return images.to(device), labels.to(device), indices.to(device)


def build_methods(
    model: nn.Module | None,
    methods: Sequence[str],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> dict[str, AttributionMethod]:
    """Build each method on ``model``; ``seed`` goes to every method that takes one and has none given."""
    built = {}
    for name in methods:
        params = dict((method_params or {}).get(name) or {})
        if "seed" in accepted_params(name, params):
            params.setdefault("seed", seed)
        built[name] = get_method(name, model if needs_model(name, params) else None, **params)
    return built


def explain(
    methods: Mapping[str, AttributionMethod], images: Tensor, target: Tensor, indices: Tensor | None = None
) -> dict[str, Tensor]:
    """Every method's maps of the whole batch, one call each (no loop over images)."""
    return {name: method(images, target, indices) for name, method in methods.items()}


def compare(
    reference: Mapping[str, Tensor], maps: Mapping[str, Tensor], metrics: Sequence[str], settings: SanitySettings | None = None
) -> dict[str, dict[str, Tensor]]:
    """``{method: {metric: (B,) similarity}}`` between reference maps and other maps, per method."""
    options = as_settings(settings).map_options
    return {name: compare_maps(reference[name], maps[name], metrics, **options) for name in reference}


def fixed_target(model: nn.Module, images: Tensor, labels: Tensor | None = None, target: str = "predicted") -> Tensor:
    """The class every step explains: ``model``'s predicted class (default) or the true label.

    The prediction is made on a copy, so the model being trained is not even run.
    """
    check_target(target)
    if target == "label":
        return resolve_target(None, images, labels, "label")
    network = copy.deepcopy(explained_network(model))
    return resolve_target(network, images, None, "predicted")
