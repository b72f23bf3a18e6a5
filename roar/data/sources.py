"""Dataset sources: a name and a few options in, train/test datasets of ``[0, 1]`` images out.

Every source returns an :class:`ImageSource` (:mod:`roar.data.image_source`). Its datasets
yield ``(image, label)`` with ``image`` a float32 ``(C, H, W)`` tensor in ``[0, 1]``,
un-augmented and un-normalised: masking (ROAR), augmentation and normalisation happen later,
on the device.

Sources small enough to hold in memory return :class:`TensorImageDataset` (one tensor for all
images, served without worker processes); ``image_folder`` reads files lazily.

File-backed sources (``cifar10``, ``mnist``, ``fashion_mnist``, ``image_folder``) read the files'
own formats with small readers (:mod:`roar.data.cifar10`, :mod:`roar.data.mnist`,
:mod:`roar.data.image_folder`) rather than torchvision's dataset classes: those check
every file's md5, which rules out the tiny stand-in files the tests write. torchvision is used
only to *download* (``download=True``), after which the same readers load the files.

This module holds the registry and :func:`load_source`; the built-in loaders live in a module per
family (also :mod:`roar.data.embedded_sources`: digits and the synthetic benchmark) and are
re-exported here, so ``from roar.data.sources import load_cifar10`` keeps working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from roar.data.cifar10 import CIFAR10_FOLDER, CIFAR10_META_FILE, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, load_cifar10, read_cifar10_batch
from roar.data.embedded_sources import load_digits, load_synthetic_linear, make_synthetic_linear
from roar.data.image_folder import IMAGE_EXTENSIONS, ImageFileDataset, load_image_folder
from roar.data.image_source import ImageSource, TensorImageDataset, resize_images
from roar.data.mnist import FASHION_MNIST_CLASSES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MNIST_FILES, load_fashion_mnist, load_mnist, read_idx
from roar.registry import Registry

SOURCES: Registry[Callable[..., ImageSource]] = Registry("dataset source", entry_point_group="roar.sources")
"""Source names -> loaders ``(root=, download=, image_size=, **options) -> ImageSource``."""


def register_source(name: str | None = None, *, override: bool = False):
    """Register a loader ``(root, download, image_size, **options) -> ImageSource``, as the built-ins are."""
    return SOURCES.register(name, override=override)


for _name, _loader in {
    "digits": load_digits, "synthetic_linear": load_synthetic_linear, "cifar10": load_cifar10, "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist, "image_folder": load_image_folder,
}.items():  # fmt: skip
    register_source(_name)(_loader)


def list_sources() -> list[str]:
    """The names :func:`load_source` accepts."""
    return SOURCES.names()


_LOADED: dict[str, ImageSource] | None = None
"""Sources already loaded, by their arguments, while :func:`reuse_loaded_sources` is on (else None)."""


@contextlib.contextmanager
def reuse_loaded_sources() -> Iterator[None]:
    """Within the block, :func:`load_source` loads each dataset once and hands out the same splits.

    A ROAR grid (Hooker et al. 2019) builds a datamodule for each of its hundreds of retrains,
    all on the same data; reading and resizing it every time (a CIFAR-10 batch file, MNIST IDX)
    is cost that does not change between runs. The splits are only read, never written (limits,
    label permutations and masks make their own tensors), so sharing them changes no result.
    """
    global _LOADED
    outer = _LOADED
    _LOADED = {} if outer is None else outer
    try:
        yield
    finally:
        _LOADED = outer


def load_source(name: str, root: str | Path | None = None, download: bool = False, image_size: int | None = None, **options: Any) -> ImageSource:
    """Load a dataset source by name (once per set of arguments inside :func:`reuse_loaded_sources`).

    Args:
        name: one of :func:`list_sources`.
        root: folder holding the files, for file-backed sources.
        download: fetch the files into ``root`` if missing (needs internet).
        image_size: resize images to this side; ``None`` keeps the native size.
        **options: source-specific options (e.g. ``seed`` for ``synthetic_linear``).
    """
    loader = SOURCES.get(name)  # an unknown name fails here, listing the valid ones
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if _LOADED is None:
        return loader(root=root, download=download, image_size=image_size, **options)
    key = repr((name, str(root) if root is not None else None, image_size, sorted(options.items())))
    if key not in _LOADED:
        _LOADED.clear()  # one dataset at a time: a grid has one, and a second would double the memory
        _LOADED[key] = loader(root=root, download=download, image_size=image_size, **options)
    return _LOADED[key]


__all__ = [
    "CIFAR10_FOLDER", "CIFAR10_META_FILE", "CIFAR10_TEST_FILE", "CIFAR10_TRAIN_FILES", "FASHION_MNIST_CLASSES", "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC", "IMAGE_EXTENSIONS", "MNIST_FILES", "SOURCES", "ImageFileDataset", "ImageSource", "TensorImageDataset",
    "list_sources", "load_cifar10", "load_digits", "load_fashion_mnist", "load_image_folder", "load_mnist", "load_source",
    "load_synthetic_linear", "make_synthetic_linear", "read_cifar10_batch", "read_idx", "register_source", "resize_images",
    "reuse_loaded_sources",
]  # fmt: skip
