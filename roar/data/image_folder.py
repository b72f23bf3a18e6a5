"""Image folders (ImageNet, Food-101, Birdsnap laid out as split/class/image), read lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from roar.data.image_source import ImageSource
from roar.data.source_files import _reject_options, _require_root

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
