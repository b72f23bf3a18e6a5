"""Dataset sources: a name and a few options in, train/test datasets of ``[0, 1]`` images out.

Every source returns an :class:`ImageSource`. Its datasets yield ``(image, label)`` with
``image`` a float32 ``(C, H, W)`` tensor in ``[0, 1]``, un-augmented and un-normalised:
masking (ROAR), augmentation and normalisation happen later, on the device.

Sources small enough to hold in memory return :class:`TensorImageDataset` (one tensor for all
images, served without worker processes); ``image_folder`` reads files lazily.

File-backed sources (``cifar10``, ``mnist``, ``fashion_mnist``, ``image_folder``) read the files'
own formats with the small readers below rather than torchvision's dataset classes: those check
every file's md5, which rules out the tiny stand-in files the tests write. torchvision is used
only to *download* (``download=True``), after which the same readers load the files.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from roar.registry import Registry


class TensorImageDataset(Dataset):
    """Images and labels held as two tensors: ``images`` (N, C, H, W) float32, ``labels`` (N,) int64."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass
class ImageSource:
    """A dataset's two splits and what the model needs to know about them.

    Attributes:
        name: the source's registry name.
        train: the training split (validation is carved out of it later, by the datamodule).
        test: the test split.
        num_classes: number of classes.
        in_chans: image channels.
        image_size: side of the square images, in pixels.
        class_names: one name per class.
        extras: source-specific facts, e.g. the synthetic benchmark's informative weights.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorImageDataset) and isinstance(self.test, TensorImageDataset)


def resize_images(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Resize a stack of square images to ``image_size`` (bilinear, antialiased); ``None`` keeps them."""
    if image_size is None or images.shape[-1] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(members)))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def load_digits(image_size: int | None = None, test_fraction: float = 0.2, split_seed: int = 0, **_: Any) -> ImageSource:
    """scikit-learn's digits: 1,797 real 8x8 grey images of handwritten digits, shipped with scikit-learn.

    There is no official split, so a seeded stratified one is drawn (``test_fraction`` of each class).
    Pixel values 0..16 are scaled to [0, 1]; ``image_size`` upsamples them once, at load time.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = resize_images(images, image_size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = _stratified_split(bunch.target, test_fraction, split_seed)
    return ImageSource(
        name="digits",
        train=TensorImageDataset(images[train_idx], labels[train_idx]),
        test=TensorImageDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
        in_chans=1,
        image_size=images.shape[-1],
        class_names=[str(d) for d in range(10)],
    )


def make_synthetic_linear(
    n_train: int = 8000,
    n_test: int = 2000,
    n_informative: int = 4,
    seed: int = 0,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the 16-feature linear benchmark of Hooker et al. (NeurIPS 2019, section 4.1).

    ``x = a z / 10 + d eta + eps / 10`` and ``y = 1(z > 0)``, with ``z, eta, eps`` standard normal,
    ``a`` non-zero in exactly ``n_informative`` random positions and ``d`` a random direction.
    Only the informative positions carry the label, so the ground-truth ranking is known.

    Returns:
        ``(x, y, a, d)``: features (n, 16), labels (n,), informative weights (16,), distractor (16,).
    """
    n_features = 16
    if not 1 <= n_informative < n_features:
        raise ValueError(f"n_informative must be in [1, {n_features - 1}], got {n_informative}")
    gen = torch.Generator().manual_seed(seed)
    a = torch.zeros(n_features)
    informative = torch.randperm(n_features, generator=gen)[:n_informative]
    a[informative] = torch.randn(n_informative, generator=gen).abs() + 0.5
    # d is dense: the shared noise eta also corrupts the informative features, so a model that
    # fits well leans on the uninformative ones to cancel it. That is what makes removal without
    # retraining look harmful for every ranking (the paper's distribution-shift confound).
    d = torch.randn(n_features, generator=gen)
    n = n_train + n_test
    z, eps = torch.randn(n, 1, generator=gen), torch.randn(n, n_features, generator=gen)
    eta = torch.randn(n, 1, generator=gen)
    x = a * z / 10 + d * eta + eps / 10
    y = (z.squeeze(1) > 0).long()
    return x, y, a, d


def load_synthetic_linear(n_train: int = 8000, n_test: int = 2000, n_informative: int = 4, seed: int = 0, **_: Any) -> ImageSource:
    """The synthetic benchmark as a 1 x 4 x 4 "image" so masking and models treat it like any other."""
    x, y, a, d = make_synthetic_linear(n_train, n_test, n_informative, seed)
    images = x.view(-1, 1, 4, 4)
    return ImageSource(
        name="synthetic_linear",
        train=TensorImageDataset(images[:n_train], y[:n_train]),
        test=TensorImageDataset(images[n_train:], y[n_train:]),
        num_classes=2,
        in_chans=1,
        image_size=4,
        class_names=["z<=0", "z>0"],
        extras={"informative_weights": a.view(1, 4, 4), "distractor": d.view(1, 4, 4)},
    )


# --------------------------------------------------------------------------------------------
# Shared helpers for file-backed sources
# --------------------------------------------------------------------------------------------

_DOWNLOAD_HINT = "set `download: true` in the data config (or pass --data.download true) to fetch it"


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"dataset source {name!r} reads files, so it needs a root folder: set `root` (--data.root PATH)")
    return Path(root).expanduser()


def _reject_options(name: str, options: dict[str, Any], valid: Sequence[str] = ()) -> None:
    # A misspelt option silently ignored would load the wrong data without a word; refuse it.
    if options:
        choices = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option(s) {sorted(options)} for dataset source {name!r}; valid options: {choices}")


def _download_with_torchvision(name: str, dataset_class: str, root: Path) -> None:
    """Fetch a dataset's files into ``root`` with torchvision's downloader (it verifies the md5s)."""
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(torchvision.datasets, dataset_class)(root=str(root), train=True, download=True)
    except Exception as err:  # network failures surface as URLError, HTTPError, RuntimeError, ...
        raise RuntimeError(f"could not download {name} into {root}: {err}") from err


def _uint8_to_unit(array: np.ndarray) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    # astype copies into a fresh writable array (IDX arrays are read-only views of the file bytes).
    return torch.from_numpy(array.astype(np.float32)).div_(255.0)


# --------------------------------------------------------------------------------------------
# CIFAR-10, python version
# --------------------------------------------------------------------------------------------

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
    if not folder.is_dir() and download:
        _download_with_torchvision("cifar10", "CIFAR10", root)
    expected = ", ".join((*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE))
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
    return ImageSource(
        name="cifar10",
        train=splits[0],
        test=splits[1],
        num_classes=len(class_names),
        in_chans=3,
        image_size=splits[0].images.shape[-1],
        class_names=class_names,
    )


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST, IDX format
# --------------------------------------------------------------------------------------------

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
        _download_with_torchvision(name, dataset_class, root)
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
    return ImageSource(
        name=name,
        train=splits[0],
        test=splits[1],
        num_classes=len(class_names),
        in_chans=1,
        image_size=splits[0].images.shape[-1],
        class_names=class_names,
    )


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


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet, Food-101, Birdsnap laid out as split/class/image)
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_FOLDER_LAYOUT = "root/<split>/<class>/<image>.{jpg,jpeg,png,...}"


class ImageFileDataset(Dataset):
    """Image files read on demand: RGB, short side resized to ``image_size``, centre-cropped square.

    This is the standard ImageNet evaluation crop; Hooker et al. (NeurIPS 2019) feed ROAR's
    ImageNet models 224 x 224 images. Random-crop augmentation happens later, on the device.

    Attributes:
        samples: ``(path, label)`` per image.
        labels: int64 ``(N,)`` tensor of the labels, for stratified splitting without reading images.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], image_size: int) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        self.samples = list(samples)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torchvision.transforms.v2.functional as TF
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise ValueError(f"cannot read image {path}: {err}") from err
        if min(img.size) != self.image_size:
            img = TF.resize(img, [self.image_size], antialias=True)
        img = TF.center_crop(img, [self.image_size, self.image_size])
        return TF.pil_to_tensor(img).to(torch.float32).div_(255.0), label


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store's kin) are never classes.
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_samples(split_dir: Path, class_to_index: dict[str, int]) -> list[tuple[Path, int]]:
    return [(path, class_to_index[c]) for c in _class_folders(split_dir) for path in _list_images(split_dir / c)]


def load_image_folder(
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    train_split: str = "train",
    test_split: str = "test",
    **options: Any,
) -> ImageSource:
    """Images in class folders, ``root/<split>/<class>/<image>``, read lazily.

    The layout of ImageNet, Food-101 and Birdsnap, the large-image datasets of Hooker et al.
    (NeurIPS 2019), once arranged by class. Class names are the sorted folder names of the train
    split; the test split uses the same list (a test class absent from train is an error).

    Args:
        root: the folder holding the split folders.
        download: unsupported; these datasets are arranged by hand.
        image_size: side of the square crops; ``None`` means 224.
        train_split: name of the training split's folder.
        test_split: name of the test split's folder; when the default ``"test"`` is missing,
            ``"val"`` is used (ImageNet ships its labelled held-out set as ``val``).
    """
    _reject_options("image_folder", options, ("train_split", "test_split"))
    if download:
        raise ValueError(f"image_folder cannot download; arrange the images as {_FOLDER_LAYOUT} and set download: false")
    root = _require_root("image_folder", root)
    image_size = 224 if image_size is None else image_size
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder root {root} does not exist; expected {_FOLDER_LAYOUT}")
    train_dir = root / train_split
    if not train_dir.is_dir():
        raise FileNotFoundError(f"no training split folder {train_dir}; expected {_FOLDER_LAYOUT} with <split> = {train_split!r}")
    test_dir = root / test_split
    if not test_dir.is_dir() and test_split == "test" and (root / "val").is_dir():
        test_dir = root / "val"
    if not test_dir.is_dir():
        tried = f"{test_dir} or {root / 'val'}" if test_split == "test" else str(test_dir)
        raise FileNotFoundError(f"no test split folder: tried {tried}; expected {_FOLDER_LAYOUT}")
    class_names = _class_folders(train_dir)
    if not class_names:
        raise ValueError(f"no class folders in {train_dir}; expected one sub-folder of images per class ({_FOLDER_LAYOUT})")
    empty = [c for c in class_names if not _list_images(train_dir / c)]
    if empty:
        raise ValueError(
            f"class folder(s) {empty} in {train_dir} hold no images with extensions {sorted(IMAGE_EXTENSIONS)}"
        )
    unknown = sorted(set(_class_folders(test_dir)) - set(class_names))
    if unknown:
        raise ValueError(f"test split {test_dir} has classes {unknown} that are not in the training split {train_dir}; valid classes: {class_names}")
    class_to_index = {c: i for i, c in enumerate(class_names)}
    test_samples = _folder_samples(test_dir, class_to_index)
    if not test_samples:
        raise ValueError(f"test split {test_dir} holds no images; expected {_FOLDER_LAYOUT}")
    return ImageSource(
        name="image_folder",
        train=ImageFileDataset(_folder_samples(train_dir, class_to_index), image_size),
        test=ImageFileDataset(test_samples, image_size),
        num_classes=len(class_names),
        in_chans=3,
        image_size=image_size,
        class_names=class_names,
        extras={"root": str(root), "train_split": train_dir.name, "test_split": test_dir.name},
    )


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
