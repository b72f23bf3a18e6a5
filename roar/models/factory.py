"""Model factory: one function that turns a name into a freshly initialised network.

``model.arch`` is one of three things:

- a registered name: the built-ins (``small_cnn``, ``resnet18``, ``resnet50``, ``mlp``,
  ``linear``) and anything registered with :func:`register_model` (or a ``roar.models`` entry
  point), called as ``build(num_classes=, in_chans=, image_size=, **arch_args)``;
- ``timm/<name>``: any timm model (``timm/convnext_atto``, ``timm/resnet10t``,
  ``timm/vit_tiny_patch16_224`` with ``image_size: 224``), randomly initialised;
- ``package.module.Class``: any ``nn.Module``, given ``num_classes``, ``in_chans`` and
  ``image_size`` where its constructor takes them, and ``arch_args``.

captum's Guided Backprop and Guided Grad-CAM hook ``nn.ReLU`` modules: every network built
here has its in-place ReLUs turned off; a shared ReLU is refused by those methods, by name.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from roar.registry import Registry, import_object

TIMM_PREFIX = "timm/"

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", entry_point_group="roar.models")
"""Registered model names -> builders ``(num_classes, in_chans, image_size, **arch_args) -> nn.Module``."""


def register_model(name: str | None = None, *, override: bool = False):
    """Register a model builder (a class or function) under ``name``, as the built-ins are."""
    return MODELS.register(name, override=override)

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


register_model("resnet50")(_timm_resnet("resnet50"))
register_model("resnet18")(_timm_resnet("resnet18"))
register_model("small_cnn")(SmallCNN)
register_model("mlp")(MLP)
register_model("linear")(Linear)


def list_models() -> list[str]:
    """The registered names ``build_model`` accepts (besides ``timm/<name>`` and class paths)."""
    return MODELS.names()


def unsafe_relus_off(model: nn.Module) -> nn.Module:
    """Turn in-place ReLUs off: captum's guided methods cannot hook an in-place output (timm builds them)."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def _timm(name: str, num_classes: int, in_chans: int, image_size: int, **arch_args: Any) -> nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(TIMM_PREFIX + c for c in close)}" if close else "; see timm.list_models()"
        raise ValueError(f"timm has no model {name!r}{hint}")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **arch_args)
    try:  # transformers need the image size; convnets do not take it
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:
        return timm.create_model(name, **kwargs)


def _class_path(path: str, num_classes: int, in_chans: int, image_size: int, **arch_args: Any) -> nn.Module:
    cls = _module_class(path)
    takes = inspect.signature(cls.__init__).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in takes.values())
    given = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans), ("image_size", image_size)) if k in takes or var_kw}
    try:
        return cls(**given, **arch_args)
    except TypeError as err:
        raise ValueError(f"model.arch {path!r} could not be built with {sorted({**given, **arch_args})}: {err}") from None


def _module_class(path: str) -> type[nn.Module]:
    cls = import_object(path, "model.arch")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model.arch {path!r} is {cls!r}, not an nn.Module class")
    return cls


def check_arch(name: Any, arch_args: dict[str, Any] | None = None) -> str:
    """A model name that can be built: registered, ``timm/<name>`` (checked with timm) or an importable class path.

    ``arch_args`` the constructor does not take fail here, before any training, naming the ones it does.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model.arch must be a name, got {name!r}")
    if name.startswith(TIMM_PREFIX):
        if not timm.is_model(name[len(TIMM_PREFIX):]):
            _timm(name[len(TIMM_PREFIX):], 1, 1, 1)  # raises, listing close matches
        return name  # timm's constructors take **kwargs: timm checks them when it builds
    if name in MODELS:
        _check_arch_args(name, MODELS.get(name), arch_args)
        return name
    if "." in name:
        _check_arch_args(name, _module_class(name), arch_args)
        return name
    raise ValueError(MODELS.unknown(name, "; or timm/<name> (any timm model) or package.module.Class (any nn.Module)"))


def _check_arch_args(name: str, constructor: Callable[..., Any], arch_args: dict[str, Any] | None) -> None:
    params = inspect.signature(constructor).parameters  # a class's signature is its __init__'s, less self
    if not arch_args or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("num_classes", "in_chans", "image_size")]
    for key in arch_args:
        if key not in takes:
            close = difflib.get_close_matches(str(key), takes, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            listing = f"it takes: {', '.join(takes)}" if takes else f"{name} takes no arch_args (num_classes, in_chans and image_size come from the data)"
            raise ValueError(f"model.arch_args of {name} has no {key!r}{hint}; {listing}")


def arch_source_sha256(name: str) -> str | None:
    """sha256 of the source file of a user's network: a class path, or a builder registered outside roar.

    Part of every trained model's fingerprint (the benchmark's ``base.ckpt``, the sanity report's
    models), as a method's and a datamodule's source are: editing the network's code trains it
    anew instead of reusing a checkpoint of the old code, whose shapes may still fit. None for
    roar's built-ins and timm's models (covered by roar's and timm's versions).
    """
    from roar.fingerprint import source_sha256

    if not isinstance(name, str) or name.startswith(TIMM_PREFIX):
        return None
    builder = MODELS.get(name) if name in MODELS else _module_class(name) if "." in name else None
    if builder is None or (getattr(builder, "__module__", "") or "").split(".")[0] == "roar":
        return None
    return source_sha256(builder)


def build_model(name: str, num_classes: int, in_chans: int, image_size: int, **arch_args: Any) -> nn.Module:
    """Build a freshly initialised network.

    Args:
        name: a registered name (:func:`list_models`), ``timm/<name>``, or ``package.module.Class``.
        num_classes: number of output logits.
        in_chans: input channels (1 for digits/MNIST, 3 for CIFAR-10/ImageNet).
        image_size: side of the square input image, in pixels.
        **arch_args: further constructor arguments (``model.arch_args`` in a config).

    Returns:
        An ``nn.Module`` mapping ``(B, in_chans, image_size, image_size)`` to ``(B, num_classes)``.
    """
    check_arch(name)
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans), ("image_size", image_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if name.startswith(TIMM_PREFIX):
        model = _timm(name[len(TIMM_PREFIX):], num_classes, in_chans, image_size, **arch_args)
    elif name in MODELS:
        model = MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **arch_args)
    else:
        model = _class_path(name, num_classes, in_chans, image_size, **arch_args)
    return unsafe_relus_off(model)
