"""A seeded, class-stratified part of a dataset, for a first look at a grid.

ROAR (Hooker et al., NeurIPS 2019) ranks every train and test image with every method and
retrains on all of them; on a full dataset a grid takes hours. ``data.limit_train`` and
``data.limit_test`` of :class:`~roar.data.datamodule.ImageDataModule` keep a part of each split,
with the class proportions of the whole (so that accuracy at a threshold stays comparable), and
chosen by the data's ``seed`` (so the same config always keeps the same images). The part is
applied to the source itself: the validation split, the channel statistics, the global sample
indices and the ranks all see only the kept images, and the dataset's fingerprint records the
limit, so ranks or a base model of the full set are never reused for a part, nor the reverse.
"""

from __future__ import annotations

import numbers
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from roar.data.sources import ImageSource, TensorImageDataset

Limit = int | float | None
"""A count of images (int >= 1), a fraction of the split (float in (0, 1]), or None (all of it)."""


def resolve_limit(value: Limit, available: int, name: str) -> int | None:
    """How many images ``value`` keeps of ``available``; None when it keeps them all.

    Raises:
        ValueError: naming ``name``, the value and what is valid.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a count (int >= 1) or a fraction (float in (0, 1]), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{name} must be a count >= 1 or a fraction in (0, 1], got {value!r}")
        if value > available:
            raise ValueError(f"{name}={value} is more than the {available} images of the split; use at most {available}, or a fraction in (0, 1]")
        count = int(value)
    else:
        if not 0 < value <= 1:
            raise ValueError(f"{name} as a fraction must be in (0, 1], got {value!r} (a count is an int >= 1)")
        count = max(1, int(round(float(value) * available)))
    return None if count == available else count


def stratified_indices(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` sorted indices into ``labels``, each class kept in proportion to its share.

    Each class gets ``floor(count * share)``; the images left over go to the classes with the
    largest remainders (ties to the lower class). Within a class the images are a seeded random
    choice.
    """
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * count / len(labels)
    quota = exact.floor().long()
    remainder = exact - quota
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), int(classes[i])))
    for i in order[: count - int(quota.sum())]:
        quota[i] += 1
    picked = []
    for cls, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.cat(picked).sort().values


def split_labels(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def keep(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The kept images, in memory when the split was (so the fast batched path stays)."""
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.images[indices], dataset.labels[indices])
    return Subset(dataset, indices.tolist())


def limit_source(source: ImageSource, limit_train: Limit, limit_test: Limit, seed: int) -> tuple[ImageSource, dict[str, Any] | None]:
    """``source`` with each split cut to its limit; and the record for the dataset fingerprint (None when nothing was cut)."""
    record: dict[str, Any] = {}
    splits = {}
    for split, value in (("train", limit_train), ("test", limit_test)):
        dataset = getattr(source, split)
        count = resolve_limit(value, len(dataset), f"limit_{split}")
        if count is not None:
            splits[split] = keep(dataset, stratified_indices(split_labels(dataset), count, seed))
            record[split] = count
    if not record:
        return source, None
    return replace(source, **splits), {**record, "seed": seed, "stratified": "by class"}
