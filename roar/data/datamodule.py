"""ImageDataModule: seeded splits, channel statistics and on-device augmentation.

Batches are ``(image, label, index)``. ``image`` is un-augmented and un-normalised on the way
to the device; :meth:`ImageDataModule.on_after_batch_transfer` first calls :meth:`mask`
(identity here; ROAR masking in :class:`roar.data.roar.RoarDataModule`), then augments.
Normalisation is the classifier's first layer, so the data, the attributions and the masks
all live in ``[0, 1]`` pixel space and checkpoints are self-contained.

``index`` is a *global sample index*: samples of the source's train split are
``0 .. num_train_pool - 1`` (validation is carved out of them), samples of its test split
follow at ``num_train_pool + j``. Masks look ranks up by it, so a mask always matches the image
it was computed on, whatever the sampler, the worker or the process.

The datasets that carry that index are in :mod:`roar.data.indexed`, the crop and flip in
:mod:`roar.data.augmentation`; both names are importable from here too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Subset

from roar.data import lightning_source  # noqa: F401  (registers the "lightning" source)
from roar.data.augmentation import AUGMENTATIONS, DEFAULT_AUGMENTATION, random_crop_flip
from roar.data.indexed import Batch, IndexedDataset, collate_batch
from roar.data.sources import SOURCES, ImageSource, TensorImageDataset, load_source
from roar.data.subset import limit_source
from roar.cpus import available_cores
from roar.registry import import_object

SourceName = str
"""A registered source (``roar.data.sources.list_sources``); checked when the datamodule is built, listing the choices."""


def datamodule_arguments(data: dict[str, Any]) -> dict[str, Any]:
    """A config's ``data:`` section as :class:`ImageDataModule` arguments.

    Three spellings mean the same datamodule: flat arguments (``{source: digits, ...}``), the
    ``train.py fit`` form ``{class_path: roar.data.ImageDataModule, init_args: {...}}``, and any
    other LightningDataModule ``{class_path: mypkg.MyDataModule, init_args: {...}}``, whose
    datasets become the ``lightning`` source (see :mod:`roar.data.lightning_source`); its
    ``batch_size`` argument, if any, is the batch size.
    """
    data = dict(data or {})
    if "class_path" not in data:
        return data
    unknown = sorted(set(data) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"data has class_path and {', '.join(unknown)}; put the datamodule's arguments under init_args")
    init_args = dict(data.get("init_args") or {})
    cls = import_object(data["class_path"], "data class_path")
    if isinstance(cls, type) and issubclass(cls, ImageDataModule):
        if cls is not ImageDataModule:
            raise ValueError(f"data class_path {data['class_path']} is a roar datamodule subclass; the benchmark masks the data itself, so use roar.data.ImageDataModule")
        return init_args
    if not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        raise ValueError(f"data class_path {data['class_path']!r} is {cls!r}, not a LightningDataModule subclass")
    arguments: dict[str, Any] = {"source": "lightning", "source_options": {"class_path": data["class_path"], "init_args": init_args}}
    if isinstance(init_args.get("batch_size"), int):
        arguments["batch_size"] = init_args["batch_size"]
    return arguments


class ImageDataModule(LightningDataModule):
    """A dataset source with seeded splits, channel statistics and on-device augmentation.

    Args:
        source: dataset source name (see :func:`roar.data.sources.list_sources`).
        root: folder with the dataset files (file-backed sources).
        download: download the files into ``root`` if they are missing (needs internet).
        image_size: resize images to this side; ``None`` keeps the source's native size.
        batch_size: samples per batch (per device under DDP).
        val_fraction: fraction of the source's train split held out for validation (seeded).
        num_workers: loader worker processes, at most the cores this process may use; in-memory sources
            are always served without them.
        augment: ``auto`` (the source's sensible default), ``none``, ``crop`` or ``crop_flip``.
        crop_padding: zero padding of the random crop; ``None`` is ``image_size // 8``.
        seed: seeds the validation split, the label permutation and the statistics subsample.
        label_permutation: train on randomly permuted labels (the data-randomisation test of
            Adebayo et al. 2018). Only the train split (and the validation part of it) is permuted.
        stats_samples: at most this many train images estimate the channel mean and std.
        source_options: extra options for the source (e.g. ``{"seed": 1}`` for ``synthetic_linear``).
        limit_train: keep only part of the source's train split (validation included), for a
            first look: a count (int >= 1) or a fraction (float in (0, 1]), chosen by ``seed``
            and stratified by class (:mod:`roar.data.subset`); recorded in :attr:`dataset_id`.
        limit_test: the same for the test split.
    """

    def __init__(
        self,
        source: SourceName = "digits",
        root: str | None = None,
        download: bool = False,
        image_size: int | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        augment: Literal["auto", "none", "crop", "crop_flip"] = "auto",
        crop_padding: int | None = None,
        seed: int = 0,
        label_permutation: bool = False,
        stats_samples: int = 10_000,
        source_options: dict[str, Any] | None = None,
        limit_train: int | float | None = None,
        limit_test: int | float | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(SOURCES.unknown(source))
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; valid choices: {', '.join(AUGMENTATIONS)}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        # each of these was accepted silently: stats_samples 0 made the channel mean NaN (and every loss NaN),
        # a negative crop_padding turned the crop off, a negative num_workers only failed on a non-memory source
        if stats_samples < 1:
            raise ValueError(f"stats_samples must be positive (train images estimating the channel mean and std), got {stats_samples}")
        if crop_padding is not None and crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0 (or null: image_size // 8), got {crop_padding}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # image_size is left to the model's hyperparameters, which hold the resolved size (a
        # requested None would clash with it when loggers merge data and model hyperparameters).
        self.save_hyperparameters(ignore=["image_size"])
        self.source_name = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.source: ImageSource = load_source(source, root=root, download=download, image_size=image_size, **(source_options or {}))
        self.source, self.limit = limit_source(self.source, limit_train, limit_test, seed)
        self.augment = DEFAULT_AUGMENTATION.get(source, "none") if augment == "auto" else augment
        self.crop_padding = crop_padding if crop_padding is not None else max(1, self.image_size // 8)

        gen = torch.Generator().manual_seed(seed)
        n_pool = len(self.source.train)
        order = torch.randperm(n_pool, generator=gen)
        n_val = int(round(val_fraction * n_pool))
        self.val_indices = order[:n_val].sort().values
        self.train_indices = order[n_val:].sort().values
        self.train_labels = None
        if label_permutation:
            self.train_labels = self._pool_labels()[torch.randperm(n_pool, generator=gen)]
        mean, std = self._channel_stats(stats_samples, gen)
        self.channel_mean: list[float] = mean.tolist()
        self.channel_std: list[float] = std.tolist()

    # ----------------------------------------------------------------- facts the model needs
    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def in_chans(self) -> int:
        return self.source.in_chans

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def num_train_pool(self) -> int:
        """Samples in the source's train split (train + validation)."""
        return len(self.source.train)

    @property
    def num_samples(self) -> int:
        """Samples addressable by a global index: train pool followed by test."""
        return len(self.source.train) + len(self.source.test)

    @property
    def dataset_id(self) -> dict[str, Any]:
        """What identifies the images (not the labels or splits): part of every attribution fingerprint."""
        hp = self.hparams
        return {
            "source": self.source_name,
            "image_size": self.image_size,
            "root": str(hp.root) if hp.root else None,
            "source_options": dict(hp.source_options or {}),
            "num_train": len(self.source.train),
            "num_test": len(self.source.test),
            # a part of the data (data.limit_train/limit_test): which images, not only how many
            **({"limit": self.limit} if self.limit else {}),
            # a user's datamodule: its import path, arguments and source hash
            **({"identity": self.source.extras["identity"]} if "identity" in self.source.extras else {}),
        }

    # ----------------------------------------------------------------- datasets
    def _pool_labels(self) -> torch.Tensor:
        if isinstance(self.source.train, TensorImageDataset):
            return self.source.train.labels
        return torch.tensor([int(self.source.train[i][1]) for i in range(len(self.source.train))])

    def _channel_stats(self, max_samples: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.train_indices
        if isinstance(self.source.train, TensorImageDataset):
            images = self.source.train.images[train if len(train) <= max_samples else train[torch.randperm(len(train), generator=gen)[:max_samples]]]
        else:
            pick = train[torch.randperm(len(train), generator=gen)[:max_samples]]
            images = torch.stack([self.source.train[int(i)][0] for i in pick])
        mean = images.mean(dim=(0, 2, 3), dtype=torch.float64).float()
        std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return mean, std

    def split_dataset(self, split: Literal["train", "val", "test", "train_pool"]) -> Dataset:
        """The un-augmented dataset of a split, yielding ``(image, label, global index)``."""
        pool = IndexedDataset(self.source.train, offset=0, labels=self.train_labels)
        if split == "train":
            return Subset(pool, self.train_indices.tolist())
        if split == "val":
            return Subset(pool, self.val_indices.tolist())
        if split == "train_pool":
            return pool
        if split == "test":
            return IndexedDataset(self.source.test, offset=self.num_train_pool)
        raise ValueError(f"unknown split {split!r}; valid splits: train, val, test, train_pool")

    def source_split(self, split: Literal["train", "test"]) -> Dataset:
        """A whole source split with *local* indices (0..N-1) and true labels: what attribution ranks."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown source split {split!r}; valid splits: train, test")
        return IndexedDataset(self.source.train if split == "train" else self.source.test, batched=False)

    def _loader(self, dataset: Dataset, shuffle: bool, evaluation: bool = False) -> DataLoader:
        # at most this process's CPUs: a config written for a 16-core GPU node (imagenet_resnet50.yaml)
        # would otherwise start 16 workers per loader on a laptop, and torch warn about it every run
        workers = 0 if self.source.in_memory else min(self.num_workers, available_cores())
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=self._evaluation_sampler(dataset) if evaluation else None,
            num_workers=workers,
            collate_fn=collate_batch,
            persistent_workers=workers > 0,
            pin_memory=False,
            drop_last=False,
        )

    def _evaluation_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each validation/test image once over all processes.

        Lightning's own ``DistributedSampler`` repeats a few images to even out the shards, so the
        accuracy of a multi-process test was not the test-set accuracy a paper table reports (and
        Lightning warned about it after every ``fit``). Shards here differ by at most one image;
        the accuracy metric sums its counts across processes, so it is exact. DDP syncs buffers only
        on the first forward of an evaluation, which every process runs (Lightning's predict loop
        relies on the same).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("val"), shuffle=False, evaluation=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split_dataset("test"), shuffle=False, evaluation=True)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ----------------------------------------------------------------- on the device
    def mask(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Replace features before augmentation; the identity here (see ``RoarDataModule``)."""
        return images

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment == "none":
            return images
        return random_crop_flip(images, self.crop_padding, flip=self.augment == "crop_flip")

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if isinstance(batch, torch.Tensor):  # the model's example input (Lightning's model summary): no sample to mask
            return batch
        images, labels, indices = batch
        images = self.mask(images, indices)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            images = self.augment_batch(images)
        return images, labels, indices
