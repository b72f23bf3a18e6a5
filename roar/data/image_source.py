"""What every dataset source returns: an :class:`ImageSource` of two splits of ``[0, 1]`` images.

Its datasets yield ``(image, label)`` with ``image`` a float32 ``(C, H, W)`` tensor in ``[0, 1]``,
un-augmented and un-normalised: masking (ROAR), augmentation and normalisation happen later, on
the device. Sources small enough to hold in memory return :class:`TensorImageDataset` (one tensor
for all images, served without worker processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


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

    @classmethod
    def from_tensors(
        cls, name: str, train: TensorImageDataset, test: TensorImageDataset, class_names: list[str], extras: dict[str, Any] | None = None
    ) -> ImageSource:
        """A source of two in-memory splits: classes, channels and size read from the names and the images."""
        return cls(
            name=name, train=train, test=test, num_classes=len(class_names), in_chans=train.images.shape[1],
            image_size=train.images.shape[-1], class_names=class_names, extras=extras or {},
        )  # fmt: skip

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorImageDataset) and isinstance(self.test, TensorImageDataset)


def resize_images(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """Resize a stack of square images to ``image_size`` (bilinear, antialiased); ``None`` keeps them."""
    if image_size is None or images.shape[-1] == image_size:
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
