"""Write tiny datasets in the real on-disk formats, for tests that load them through ``load_source``.

Each writer returns what it wrote, so tests can check exact round trips. Pixels are class-dependent
(a per-class base colour plus noise), so a model can learn them: end-to-end tests may assert
better-than-chance accuracy as well as shapes.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Written:
    """What a writer put on disk: uint8 images (N, C, H, W) and int64 labels per split."""

    path: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def _class_images(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, int, int], num_classes: int) -> np.ndarray:
    """uint8 images whose mean colour depends on the label (learnable) plus uniform noise (so not constant)."""
    base = rng.integers(40, 216, size=(num_classes, shape[0], 1, 1))
    noise = rng.integers(-40, 41, size=(len(labels), *shape))
    return np.clip(base[labels] + noise, 0, 255).astype(np.uint8)


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    # Every class appears once n >= num_classes; the order is shuffled so it is not positional.
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def write_cifar10(root: str | Path, n_train_per_batch: int = 6, n_test: int = 6, seed: int = 0) -> Written:
    """Write ``root/cifar-10-batches-py`` in CIFAR-10's python format (5 train batches, test, meta).

    Each batch is a pickled dict with bytes keys, ``b"data"`` uint8 (N, 3072) and ``b"labels"`` a
    list of ints, as in the real files; ``batches.meta`` holds ``b"label_names"``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    n_train = 5 * n_train_per_batch
    train_labels, test_labels = _labels(rng, n_train, 10), _labels(rng, n_test, 10)
    train_images = _class_images(rng, train_labels, (3, 32, 32), 10)
    test_images = _class_images(rng, test_labels, (3, 32, 32), 10)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": images.reshape(len(images), -1),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    for b in range(5):
        rows = slice(b * n_train_per_batch, (b + 1) * n_train_per_batch)
        dump(f"data_batch_{b + 1}", train_images[rows], train_labels[rows])
    dump("test_batch", test_images, test_labels)
    meta = {b"num_cases_per_batch": n_train_per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Written(folder, train_images, train_labels, test_images, test_labels, list(CIFAR10_CLASSES))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic (0, 0, 0x08, ndim), big-endian int32 dims, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">i", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()


def write_mnist(root: str | Path, n_train: int = 12, n_test: int = 6, gz: bool = False, folder: str = "MNIST", seed: int = 0) -> Written:
    """Write the four MNIST IDX files into ``root/<folder>/raw`` (``folder="FashionMNIST"`` for Fashion-MNIST).

    Args:
        gz: write ``<name>.gz`` (gzip) instead of the plain files.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_labels, test_labels = _labels(rng, n_train, 10), _labels(rng, n_test, 10)
    train_images = _class_images(rng, train_labels, (1, 28, 28), 10)
    test_images = _class_images(rng, test_labels, (1, 28, 28), 10)
    files = {
        "train-images-idx3-ubyte": train_images[:, 0],
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test_images[:, 0],
        "t10k-labels-idx1-ubyte": test_labels,
    }
    for name, array in files.items():
        data = idx_bytes(array)
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return Written(raw, train_images, train_labels, test_images, test_labels, [str(d) for d in range(10)])


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog"),
    per_class: int = 2,
    size: int | tuple[int, int] | Sequence[tuple[int, int]] = 16,
    splits: Sequence[str] = ("train", "test"),
    ext: str = "png",
    seed: int = 0,
) -> dict[str, list[tuple[Path, int, np.ndarray]]]:
    """Write ``root/<split>/<class>/<i>.<ext>`` RGB images.

    Args:
        size: a side (square images), a ``(width, height)``, or a list of ``(width, height)``
            cycled over the images of each class (to mix sizes).
        ext: ``png`` (lossless, exact round trip) or ``jpg``.

    Returns:
        Per split, ``(path, label, pixels)`` per image: label indexes the sorted class names,
        pixels are the uint8 ``(H, W, 3)`` array written.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    if isinstance(size, int):
        sizes = [(size, size)]
    elif len(size) == 2 and all(isinstance(v, int) for v in size):
        sizes = [tuple(size)]
    else:
        sizes = [tuple(s) for s in size]
    index = {c: i for i, c in enumerate(sorted(classes))}
    written: dict[str, list[tuple[Path, int, np.ndarray]]] = {}
    for split in splits:
        written[split] = []
        for c in classes:
            folder = Path(root) / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width, height = sizes[i % len(sizes)]
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                path = folder / f"{i}.{ext}"
                Image.fromarray(pixels).save(path)
                written[split].append((path, index[c], pixels))
    return written
