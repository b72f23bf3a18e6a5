"""MNIST and Fashion-MNIST: LeCun et al.'s IDX files (plain or gzipped) read into an :class:`ImageSource`."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roar.data.image_source import ImageSource, TensorImageDataset, resize_images
from roar.data.source_files import _DOWNLOAD_HINT, _download_with_torchvision, _reject_options, _require_root, _uint8_to_unit

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (LeCun et al.'s MNIST format), plain or gzipped.

    The header is a big-endian int32 magic number (two zero bytes, the type code ``0x08`` for
    unsigned bytes, the number of dimensions), then one big-endian int32 per dimension.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        magic: the expected magic number, :data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`.

    Returns:
        A uint8 array of the dimensions in the header.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4:
        raise ValueError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    (found,) = struct.unpack(">i", raw[:4])
    if found != magic:
        raise ValueError(f"{path} starts with magic number {found:#010x}; expected {magic:#010x} for an IDX file of this kind")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header gives dimensions {dims} ({int(np.prod(dims))} bytes) but {data.size} bytes follow")
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    # torchvision leaves both the archive and the extracted file; either will do.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_source(name: str, folder_name: str, dataset_class: str, class_names: list[str], root: str | Path | None, download: bool, image_size: int | None) -> ImageSource:
    root = _require_root(name, root)
    raw = root / folder_name / "raw"
    stems = [stem for pair in MNIST_FILES.values() for stem in pair]
    if download and any(_find_idx(raw, stem) is None for stem in stems):
        _download_with_torchvision(name, dataset_class, root, f"{raw}/{{{', '.join(stems)}}}[.gz]")
    missing = [stem for stem in stems if _find_idx(raw, stem) is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} (or .gz) in {raw}; expected the four IDX files "
            f"{', '.join(stems)} under root/{folder_name}/raw/ as torchvision lays them out; {_DOWNLOAD_HINT}"
        )
    splits = []
    for images_stem, labels_stem in MNIST_FILES.values():
        images_path, labels_path = _find_idx(raw, images_stem), _find_idx(raw, labels_stem)
        images, labels = read_idx(images_path, IDX_IMAGES_MAGIC), read_idx(labels_path, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"{images_path}: images must be square, got {images.shape[1]} x {images.shape[2]}")
        if labels.size and labels.max() >= len(class_names):
            raise ValueError(f"{labels_path}: labels must lie in [0, {len(class_names)}), got a {labels.max()}")
        tensor = resize_images(_uint8_to_unit(images[:, None]), image_size)
        splits.append(TensorImageDataset(tensor, torch.from_numpy(labels.astype(np.int64))))
    return ImageSource.from_tensors(name, splits[0], splits[1], class_names)


def load_mnist(root: str | Path | None = None, download: bool = False, image_size: int | None = None, **options: Any) -> ImageSource:
    """MNIST (LeCun et al., 1998): 60,000 train and 10,000 test 28 x 28 grey digits.

    Reads the IDX files as torchvision lays them out, ``root/MNIST/raw/{train,t10k}-{images-idx3,
    labels-idx1}-ubyte``, plain or ``.gz``. Adebayo et al. (NeurIPS 2018) run their data
    randomisation test on MNIST.
    """
    _reject_options("mnist", options)
    return _load_idx_source("mnist", "MNIST", "MNIST", [str(d) for d in range(10)], root, download, image_size)


def load_fashion_mnist(root: str | Path | None = None, download: bool = False, image_size: int | None = None, **options: Any) -> ImageSource:
    """Fashion-MNIST (Xiao et al., 2017): MNIST's format and sizes, ten kinds of clothing.

    Reads ``root/FashionMNIST/raw/`` with the same IDX file names as :func:`load_mnist`.
    """
    _reject_options("fashion_mnist", options)
    return _load_idx_source("fashion_mnist", "FashionMNIST", "FashionMNIST", list(FASHION_MNIST_CLASSES), root, download, image_size)
