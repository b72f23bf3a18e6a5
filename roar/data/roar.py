"""RoarDataModule: the base datamodule, with ROAR/KAR masking on the device.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS
2019): for a threshold t, replace the top-t fraction of each image's features, ranked by an
attribution method, with the training per-channel mean (ROAR), or all but them (KAR), then
retrain from scratch. The ranks come from a :class:`~roar.data.ranks.RankProvider` given to the
datamodule (usually :class:`roar.attribution.StoreRanks`: ranks computed with the base model once
and cached), so this package never imports the attribution code.

Masking happens in :meth:`mask`, called by ``on_after_batch_transfer`` before augmentation:
ranks are looked up by the batch's global sample indices, so a mask always matches its image,
whichever sampler, worker or process served it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from roar.data.datamodule import ImageDataModule, SourceName
from roar.data.imputation import DEFAULT_MAX_ITER, DEFAULT_NOISE_STD, DEFAULT_SIGMA, DEFAULT_TOL, check_imputation_settings
from roar.data.masking import check_mode, mask_images
from roar.data.ranks import RankProvider

FILLS = ("channel_mean", "image_mean", "noisy_linear", "blur")
# the protocol settings (``fill_<name>``) of each imputing fill; the constant fills have none
FILL_SETTINGS = {"blur": ("sigma",), "noisy_linear": ("noise_std", "tol", "max_iter")}


def fill_options(fill: str, *, sigma: float, noise_std: float, tol: float, max_iter: int, seed: int) -> dict[str, Any]:
    """The settings of an imputing fill that move its values (empty for the constant fills)."""
    values = {"sigma": float(sigma), "noise_std": float(noise_std), "tol": float(tol), "max_iter": int(max_iter)}
    options: dict[str, Any] = {name: values[name] for name in FILL_SETTINGS.get(fill, ())}
    if fill == "noisy_linear":  # its noise is seeded
        options["seed"] = int(seed)
    return options


class RoarDataModule(ImageDataModule):
    """An :class:`ImageDataModule` whose images are ROAR/KAR-masked by a provider's ranks.

    Args:
        ranks: where the ranks come from: a :class:`~roar.data.ranks.RankProvider`
            (:class:`roar.attribution.StoreRanks` for a method's cached ranks,
            :class:`~roar.data.ranks.FreshRandomRanks` for a new random mask at every read).
            Required when ``threshold > 0``.
        threshold: fraction of features in ``[0, 1)``; 0 is the unmasked data.
        mode: ``roar`` (replace the top-t features) or ``kar`` (keep the top-t, replace the rest).
        fill: ``channel_mean`` (the training per-channel mean, as the paper), ``image_mean``,
            ``noisy_linear`` (ROAD's imputation, Rong, Leemann et al. ICML 2022) or ``blur``
            (a Gaussian-blurred copy of the image); see :mod:`roar.data.imputation`.
        fill_sigma: the ``blur`` fill's Gaussian std, in pixels (> 0).
        fill_noise_std: std of the noise ``noisy_linear`` adds to imputed values (ROAD: 0.01);
            seeded by ``fill_seed`` and each image's global index.
        fill_tol: ``noisy_linear`` solves its linear system to this max abs residual (pixel units).
        fill_max_iter: ``noisy_linear``'s conjugate gradient steps at most; a batch not solved to
            ``fill_tol`` by then stops the run with the residual named.
        fill_seed: seed of ``noisy_linear``'s noise (the benchmark passes its ``tie_seed``).
        max_device_ranks_bytes: rank tables up to this size are held on the device (one index
            per batch); larger ones (ImageNet) stay memory-mapped and each batch reads its rows.
        ranks_progress: progress bars and reuse messages while ranks are computed or found.
        **base: every :class:`ImageDataModule` argument.
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
        *,
        ranks: RankProvider | None = None,
        threshold: float = 0.0,
        mode: Literal["roar", "kar"] = "roar",
        fill: Literal["channel_mean", "image_mean", "noisy_linear", "blur"] = "channel_mean",
        fill_sigma: float = DEFAULT_SIGMA,
        fill_noise_std: float = DEFAULT_NOISE_STD,
        fill_tol: float = DEFAULT_TOL,
        fill_max_iter: int = DEFAULT_MAX_ITER,
        fill_seed: int = 0,
        max_device_ranks_bytes: int = 2 << 30,
        ranks_progress: bool = True,
    ) -> None:
        if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        if ranks is not None and not isinstance(ranks, RankProvider):
            raise ValueError(f"ranks must be a RankProvider (e.g. roar.attribution.StoreRanks), got {type(ranks).__name__}")
        if ranks is None and threshold > 0:
            raise ValueError(f"threshold {threshold} masks features, so ranks are needed: give ranks "
                             "(e.g. {class_path: roar.attribution.StoreRanks, init_args: {method: gradient, ...}})")  # fmt: skip
        check_mode(mode)
        if fill not in FILLS:
            raise ValueError(f"unknown fill {fill!r}; valid choices: {', '.join(FILLS)}")
        check_imputation_settings(sigma=fill_sigma, noise_std=fill_noise_std, tol=fill_tol, max_iter=fill_max_iter)
        super().__init__(
            source=source, root=root, download=download, image_size=image_size, batch_size=batch_size,
            val_fraction=val_fraction, num_workers=num_workers, augment=augment, crop_padding=crop_padding,
            seed=seed, label_permutation=label_permutation, stats_samples=stats_samples, source_options=source_options,
            limit_train=limit_train, limit_test=limit_test,
        )  # fmt: skip
        # Checkpoints keep plain hyperparameters (they load with weights_only): the provider is
        # recorded by what it is, not pickled. Saved again with it, because the loggers (hparams.yaml,
        # the W&B run's config) get the hyperparameters as first saved: set afterwards, a retrain's
        # run did not say which method's ranks masked its data.
        self.save_hyperparameters(ignore=["image_size", "ranks"])
        self.save_hyperparameters({**self.hparams, "ranks": ranks.describe() if ranks is not None else None})
        self.rank_provider = ranks
        self.threshold = float(threshold)
        self.mode = mode
        self.fill = fill
        self.fill_options = fill_options(fill, sigma=fill_sigma, noise_std=fill_noise_std, tol=fill_tol, max_iter=fill_max_iter, seed=fill_seed)
        self.max_device_ranks_bytes = max_device_ranks_bytes
        self.ranks_progress = ranks_progress
        self._ranks_announced = False
        self.rank_table: torch.Tensor | None = None
        self._memmaps: tuple[np.ndarray, np.ndarray] | None = None
        self._device_ranks: dict[torch.device, torch.Tensor] = {}
        self._fill = torch.tensor(self.channel_mean)

    @property
    def method(self) -> str:
        """The name of the ranking (the attribution method), or ``unmasked``."""
        return self.rank_provider.method if self.rank_provider is not None else "unmasked"

    @property
    def granularity(self) -> str:
        return self.rank_provider.granularity if self.rank_provider is not None else "element"

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol choices that move results: recorded with every run."""
        ranking = self.rank_provider.describe() if self.rank_provider is not None else {"method": "unmasked"}
        return {
            **ranking, "threshold": self.threshold, "mode": self.mode, "fill": self.fill,
            **{f"fill_{k}": v for k, v in self.fill_options.items()},
        }  # fmt: skip

    @property
    def masks_fresh(self) -> bool:
        return self.rank_provider is not None and self.rank_provider.fresh

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before `setup` on all of them, so under
        # DDP the ranks are computed once and the other ranks only read the finished entry.
        if self.threshold > 0 and not self.masks_fresh:
            self.load_ranks()

    def setup(self, stage: str | None = None) -> None:
        if self.rank_table is not None or self._memmaps is not None or self.threshold == 0 or self.masks_fresh:
            return
        train, test = self.load_ranks(announce=False)
        if train.nbytes + test.nbytes <= self.max_device_ranks_bytes:
            self.rank_table = self._as_table(np.concatenate([np.asarray(train), np.asarray(test)]))
        else:
            self._memmaps = (train, test)

    @staticmethod
    def _as_table(ranks: np.ndarray) -> torch.Tensor:
        if ranks.dtype == np.uint16:  # torch has no uint16 arithmetic; int32 holds every rank exactly
            ranks = ranks.astype(np.int32)
        return torch.from_numpy(np.ascontiguousarray(ranks))

    def _rows_from_memmaps(self, indices: torch.Tensor) -> torch.Tensor:
        train, test = self._memmaps
        idx = indices.cpu().numpy()
        rows = np.empty((len(idx), train.shape[1]), dtype=train.dtype)
        in_train = idx < len(train)
        rows[in_train] = train[idx[in_train]]
        rows[~in_train] = test[idx[~in_train] - len(train)]
        return self._as_table(rows)

    def load_ranks(self, announce: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Ranks of every train-pool and test image (memory-mapped), computing missing ones."""
        trainer = getattr(self, "trainer", None)
        # Lightning calls prepare_data again for the test after fit: say where the ranks are once per run
        progress = announce and self.ranks_progress and not self._ranks_announced and (trainer is None or trainer.is_global_zero)
        ranks = self.rank_provider.load(self, progress=progress)
        self._ranks_announced = self._ranks_announced or progress
        return ranks

    def _ranks_on(self, device: torch.device) -> torch.Tensor:
        # One copy per device: the whole table is a few hundred MB at most (CIFAR-10, int32),
        # and a lookup by index on the device beats shipping ranks with every batch.
        if device not in self._device_ranks:
            self._device_ranks[device] = self.rank_table.to(device)
        return self._device_ranks[device]

    def batch_ranks(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The ``(B, F)`` ranks of a batch, on its device, looked up by global sample index."""
        if self.masks_fresh:
            return self.rank_provider.batch_ranks(images, indices)
        self.setup()
        if self._memmaps is not None:
            return self._rows_from_memmaps(indices).to(images.device, non_blocking=True)
        return self._ranks_on(images.device)[indices]

    def mask(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.threshold == 0:
            return images
        ranks = self.batch_ranks(images, indices)
        fill = self.fill if self.fill != "channel_mean" else self._fill.to(images.device, images.dtype)
        return mask_images(images, ranks, self.threshold, self.mode, fill, self.granularity, indices=indices, fill_options=self.fill_options)
