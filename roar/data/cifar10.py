"""CIFAR-10, python version: the batch pickles read safely (numpy arrays only) into an :class:`ImageSource`."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roar.data.image_source import ImageSource, TensorImageDataset, resize_images
from roar.data.source_files import _DOWNLOAD_HINT, _download_with_torchvision, _reject_options, _require_root, _uint8_to_unit

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays.

    Unpickling can run arbitrary code; a CIFAR batch needs nothing beyond numpy's array
    reconstruction, so every other global is refused.
    """

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 spells bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        # The real CIFAR files were pickled by Python 2 with numpy 1 (``numpy.core``); numpy 2
        # renamed it ``numpy._core`` and warns on the old name, so translate it up front.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing CIFAR-10 file {path}")
    try:
        with path.open("rb") as f:
            # encoding="bytes" is how the CIFAR page says to read the Python 2 pickles.
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:
        raise ValueError(f"{path} is not a readable CIFAR-10 python pickle: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file.

    Args:
        path: a ``data_batch_i`` or ``test_batch`` file: a pickled dict whose ``b"data"`` is a
            uint8 ``(N, 3072)`` array (each row the red, green then blue 32 x 32 planes) and whose
            ``b"labels"`` is ``N`` ints.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.
    """
    path = Path(path)
    batch = _read_cifar_pickle(path)
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{path} has no {key!r} entry; found keys {sorted(map(str, batch))}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar10_meta(path: Path) -> list[str]:
    meta = _read_cifar_pickle(path)
    if "label_names" not in meta:
        raise ValueError(f"{path} has no 'label_names' entry; found keys {sorted(map(str, meta))}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta["label_names"]]


def load_cifar10(root: str | Path | None = None, download: bool = False, image_size: int | None = None, **options: Any) -> ImageSource:
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train and 10,000 test 32 x 32 colour images, 10 classes.

    The dataset of Hooker et al.'s (NeurIPS 2019) small-image ROAR experiments. Reads the python
    version as distributed: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Args:
        root: the folder holding ``cifar-10-batches-py``.
        download: fetch and extract the archive into ``root`` first if the folder is missing.
        image_size: resize once at load time; ``None`` keeps 32 px.
    """
    _reject_options("cifar10", options)
    root = _require_root("cifar10", root)
    folder = root / CIFAR10_FOLDER
    expected = ", ".join((*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE))
    if not folder.is_dir() and download:
        _download_with_torchvision("cifar10", "CIFAR10", root, f"{folder}/{{{expected}}}")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no CIFAR-10 folder at {folder}; expected the python version of CIFAR-10 extracted there "
            f"({expected}); {_DOWNLOAD_HINT}"
        )
    missing = [n for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 folder {folder} lacks {', '.join(missing)}; expected {expected}; "
            f"remove the folder and {_DOWNLOAD_HINT}"
        )
    class_names = _read_cifar10_meta(folder / CIFAR10_META_FILE)
    splits = []
    for files in (CIFAR10_TRAIN_FILES, (CIFAR10_TEST_FILE,)):
        batches = [read_cifar10_batch(folder / n) for n in files]
        labels = np.concatenate([b[1] for b in batches])
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                f"CIFAR-10 labels in {folder} ({', '.join(files)}) must lie in [0, {len(class_names)}) "
                f"for the {len(class_names)} names in {CIFAR10_META_FILE}; got {labels.min()}..{labels.max()}"
            )
        images = resize_images(_uint8_to_unit(np.concatenate([b[0] for b in batches])), image_size)
        splits.append(TensorImageDataset(images, torch.from_numpy(labels)))
    return ImageSource.from_tensors("cifar10", splits[0], splits[1], class_names)
