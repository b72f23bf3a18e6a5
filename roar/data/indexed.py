"""Datasets that yield ``(image, label, global index)``, and the collate that serves them batched.

The global index (train pool ``0 .. N-1``, then test at ``N + j``; see
:mod:`roar.data.datamodule`) travels with every image, so ROAR masks (Hooker et al., NeurIPS
2019) and per-sample attribution seeds look a sample up by it whatever the sampler or worker.
In-memory sources are read a whole batch at a time (one tensor index instead of an item read
and a collate per sample).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from roar.data.sources import TensorImageDataset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class IndexedDataset(Dataset):
    """Yields ``(image, label, offset + i)``; optionally replaces the labels.

    With ``batched`` and a :class:`TensorImageDataset` it serves whole batches through
    ``__getitems__`` (one tensor index instead of ``batch_size`` item reads and a collate);
    such batches need :func:`collate_batch` as the loader's ``collate_fn``.
    """

    def __init__(self, dataset: Dataset, offset: int = 0, labels: torch.Tensor | None = None, batched: bool = True) -> None:
        self.dataset = dataset
        self.offset = offset
        self.labels = labels
        self.batched = batched

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[i][:2]
        if self.labels is not None:
            label = int(self.labels[i])
        return image, label, self.offset + i

    def __getitems__(self, indices: list[int]) -> Batch | list[tuple[torch.Tensor, int, int]]:
        if not (self.batched and isinstance(self.dataset, TensorImageDataset)):
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = (self.labels if self.labels is not None else self.dataset.labels)[idx]
        return self.dataset.images[idx], labels, idx + self.offset


def collate_batch(batch: Batch | list[tuple[torch.Tensor, int, int]]) -> Batch:
    """Collate per-item samples; pass through batches already built by ``__getitems__``."""
    if isinstance(batch, tuple):
        return batch
    images, labels, indices = zip(*batch, strict=True)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(indices, dtype=torch.long)
