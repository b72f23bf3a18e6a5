"""Model factory: one function that turns a name into a freshly initialised classifier.

Every model here is safe for captum's Guided Backprop and Guided Grad-CAM, which register
hooks on ``nn.ReLU`` modules: ReLUs are never in-place and never shared between layers
(a shared module would receive the hook for every place it is used).
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from torch import nn

SMALL_IMAGE_MAX_SIZE = 64
"""ResNets get the small-image stem (3x3 stride-1 conv, no max-pool) at or below this size."""


def _timm_resnet(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        if image_size < 8:
            raise ValueError(f"{arch} needs images of at least 8 px, got image_size={image_size}")
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        if image_size <= SMALL_IMAGE_MAX_SIZE:
            # CIFAR-style stem (He et al. 2016, section 4.2): a 7x7 stride-2 conv and a max-pool
            # would shrink a 32 px image to 8 px before the first block.
            model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model

    return build


class SmallCNN(nn.Module):
    """A few conv + ReLU layers, like the MNIST CNN of Adebayo et al. (NeurIPS 2018).

    Each layer is its own named module (``conv1``, ``conv2``, ``conv3``, ``fc1``, ``fc2``), so
    the sanity checks can randomise them one at a time.
    """

    def __init__(self, num_classes: int, in_chans: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"small_cnn needs images of at least 4 px, got image_size={image_size}")
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        side = image_size // 4
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * side * side, 128)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        x = self.relu4(self.fc1(self.flatten(x)))
        return self.fc2(x)


class MLP(nn.Module):
    """Two hidden layers on the flattened image."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_chans * image_size * image_size, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class Linear(nn.Module):
    """A linear model ``f(x) = W vec(x) + b``: attributions of it can be checked by hand."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": _timm_resnet("resnet50"),
    "resnet18": _timm_resnet("resnet18"),
    "small_cnn": SmallCNN,
    "mlp": MLP,
    "linear": Linear,
}


def list_models() -> list[str]:
    """The names ``build_model`` accepts."""
    return sorted(MODELS)


def make_relus_guided_backprop_safe(model: nn.Module) -> nn.Module:
    """Turn every in-place ReLU off and give each use of a shared ReLU its own module check.

    timm builds ReLUs with ``inplace=True``; captum's Guided Backprop hooks fail on in-place
    outputs. A ReLU module registered under two names is shared, which the hooks cannot
    handle either: that is an error here rather than a silently wrong map later.
    """
    seen: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.ReLU):
            module.inplace = False
            if id(module) in seen and seen[id(module)] != name:
                raise ValueError(f"ReLU module shared between {seen[id(module)]!r} and {name!r}")
            seen[id(module)] = name
    return model


def build_model(name: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """Build a freshly initialised classifier.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of output logits.
        in_chans: input channels (1 for digits/MNIST, 3 for CIFAR-10/ImageNet).
        image_size: side of the square input image, in pixels.

    Returns:
        An ``nn.Module`` mapping ``(B, in_chans, image_size, image_size)`` to ``(B, num_classes)``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans), ("image_size", image_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    return make_relus_guided_backprop_safe(MODELS[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size))
