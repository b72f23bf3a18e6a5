"""Any LightningDataModule as a dataset source: the user's data, masked by roar.

ROAR needs three things a plain datamodule does not give: a global index per sample (masks are
looked up by it), the training channel mean (the fill value), and masking on the device before
augmentation. So the user's datamodule is asked for its *datasets* only, through its own
``train_dataloader()`` and ``test_dataloader()``, and :class:`~roar.data.datamodule.ImageDataModule`
does the rest, as for the built-in sources.

The contract (README, "Bring your own data"):

- ``train_dataloader().dataset`` and ``test_dataloader().dataset`` yield ``(image, label)``
  (further items are ignored);
- images are float tensors ``(C, H, W)`` in ``[0, 1]``, square, of one size per dataset;
- no random transforms in the datasets: a mask must hit the pixels it was computed on.
  Augmentation belongs after masking (``augment:`` of the ImageDataModule);
- the number of classes is the datamodule's ``num_classes`` attribute, else the largest label + 1.

Sets up to ``max_in_memory_bytes`` are read once into memory and then served like the built-in
sets (fast, batched); larger ones are read item by item through the user's dataset.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from roar.data.sources import ImageSource, TensorImageDataset, register_source
from roar.fingerprint import jsonable, source_sha256
from roar.registry import import_object

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_MEMORY_BYTES = 1 << 30


def build_datamodule(class_path: str, init_args: dict[str, Any] | None = None) -> Any:
    """Instantiate a LightningDataModule from its import path, naming it in every error."""
    from lightning.pytorch import LightningDataModule

    cls = import_object(class_path, "data class_path")
    if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        raise ValueError(f"data class_path {class_path!r} is {cls!r}, not a LightningDataModule subclass")
    try:
        return cls(**dict(init_args or {}))
    except TypeError as err:
        raise ValueError(f"data {class_path} does not take init_args {sorted(init_args or {})}: {err}") from None


def _checked_item(item: Any, where: str) -> tuple[torch.Tensor, int]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(f"{where} yields {type(item).__name__}, not (image, label); roar adds the sample index itself")
    image, label = item[0], item[1]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{where} yields images {shape}; roar needs float tensors (C, H, W) in [0, 1] (add transforms.ToTensor())")
    if image.shape[1] != image.shape[2]:
        raise ValueError(f"{where} yields {image.shape[1]}x{image.shape[2]} images; roar needs square images of one size (resize or crop in the dataset)")
    if float(image.min()) < 0 or float(image.max()) > 1:
        raise ValueError(f"{where} yields pixel values in [{float(image.min()):.3g}, {float(image.max()):.3g}]; roar needs [0, 1] "
                         "(leave normalisation out: the model normalises with the training channel statistics)")  # fmt: skip
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"{where} yields labels of type {type(label).__name__}; roar needs integer class labels") from None
    return image, label


def _dataset(datamodule: Any, split: str) -> Dataset:
    loader = getattr(datamodule, f"{split}_dataloader")()
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ValueError(f"{type(datamodule).__name__}.{split}_dataloader() has no map-style dataset (iterable datasets cannot be indexed per sample)")
    if len(dataset) == 0:
        raise ValueError(f"{type(datamodule).__name__}.{split}_dataloader() has an empty dataset")
    return dataset


def _in_memory(dataset: Dataset, where: str) -> TensorImageDataset:
    items = [_checked_item(dataset[i], where) for i in range(len(dataset))]
    shapes = {tuple(image.shape) for image, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"{where} yields images of several sizes {sorted(shapes)[:3]}; roar needs one size per dataset")
    return TensorImageDataset(torch.stack([image for image, _ in items]).float(), torch.tensor([label for _, label in items], dtype=torch.long))


class _CheckedDataset(Dataset):
    """A large user dataset read item by item, each item checked against the contract."""

    def __init__(self, dataset: Dataset, where: str) -> None:
        self.dataset = dataset
        self.where = where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _checked_item(self.dataset[index], self.where)


def datamodule_source_sha256(data: dict[str, Any]) -> str | None:
    """sha256 of the source file of a user's datamodule in ImageDataModule arguments (the ``lightning`` source), else None.

    Part of every trained model's fingerprint: editing the datamodule's code changes the data.
    """
    if data.get("source") != "lightning":
        return None
    return source_sha256(import_object((data.get("source_options") or {}).get("class_path"), "data class_path"))


@register_source("lightning")
def load_lightning_datamodule(
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    class_path: str | None = None,
    init_args: dict[str, Any] | None = None,
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES,
    **options: Any,
) -> ImageSource:
    """The train and test datasets of a user's LightningDataModule, as a source.

    Args:
        class_path: the datamodule's import path (``mypkg.data.MyDataModule``).
        init_args: its constructor's arguments.
        max_in_memory_bytes: read sets up to this size into memory once.
        image_size: must be the datasets' own size, if given (resize in the datamodule).
    """
    if options:
        raise ValueError(f"the lightning source takes class_path, init_args and max_in_memory_bytes; got {sorted(options)}")
    if not class_path:
        raise ValueError("the lightning source needs class_path: the LightningDataModule to read")
    datamodule = build_datamodule(class_path, init_args)
    name = type(datamodule).__name__
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = _dataset(datamodule, "train")
    datamodule.setup("test")
    test = _dataset(datamodule, "test")
    first, _ = _checked_item(train[0], f"{name}'s train dataset")
    per_image = first.numel() * 4
    splits = []
    for split, dataset in (("train", train), ("test", test)):
        where = f"{name}'s {split} dataset"
        if per_image * len(dataset) <= max_in_memory_bytes:
            splits.append(_in_memory(dataset, where))
        else:
            _checked_item(dataset[0], where)
            splits.append(_CheckedDataset(dataset, where))
    in_chans, size = first.shape[0], first.shape[-1]
    if image_size is not None and image_size != size:
        raise ValueError(f"{name} yields {size} px images but image_size is {image_size}; resize in the datamodule, or leave image_size unset (null: --data.init_args.image_size null)")
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is None:
        labels = [s.labels for s in splits if isinstance(s, TensorImageDataset)]
        if len(labels) < 2:
            raise ValueError(f"{name} has no num_classes attribute; set one (its datasets are too large to scan for labels)")
        num_classes = int(torch.cat(labels).max()) + 1
    class_names = list(getattr(datamodule, "class_names", None) or [str(i) for i in range(int(num_classes))])
    identity = {"class_path": class_path, "init_args": jsonable(init_args or {}), "source_sha256": source_sha256(type(datamodule))}
    log.info("data: %s, %d train / %d test images of %d x %d px, %d classes", name, len(train), len(test), in_chans, size, num_classes)
    return ImageSource(
        name="lightning", train=splits[0], test=splits[1], num_classes=int(num_classes), in_chans=int(in_chans),
        image_size=int(size), class_names=class_names, extras={"identity": identity},
    )  # fmt: skip
