"""RoarDataModule: the base datamodule, with ROAR/KAR masking on the device.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS
2019): for a threshold t, replace the top-t fraction of each image's features, ranked by an
attribution method, with the training per-channel mean (ROAR), or all but them (KAR), then
retrain from scratch. Ranks come from the :class:`~roar.attribution.store.AttributionStore`,
computed with the base model once (or now, if the base checkpoint is given and they are missing).

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
from roar.data.masking import check_granularity, check_mode, check_score, mask_images, num_features, ranks_from_scores

FILLS = ("channel_mean", "image_mean", "noisy_linear", "blur")
RANDOM_MASKS = ("fixed", "fresh")


def fill_options(fill: str, *, sigma: float, noise_std: float, tol: float, max_iter: int, seed: int) -> dict[str, Any]:
    """The settings of an imputing fill that move its values (empty for the constant fills)."""
    if fill == "blur":
        return {"sigma": float(sigma)}
    if fill == "noisy_linear":
        return {"noise_std": float(noise_std), "tol": float(tol), "max_iter": int(max_iter), "seed": int(seed)}
    return {}


class RoarDataModule(ImageDataModule):
    """An :class:`ImageDataModule` whose images are ROAR/KAR-masked by a method's ranks.

    Args:
        method: attribution method (registry key) whose ranks decide what is replaced.
        threshold: fraction of features in ``[0, 1)``; 0 is the unmasked data.
        mode: ``roar`` (replace the top-t features) or ``kar`` (keep the top-t, replace the rest).
        store: folder of the attribution store.
        base_checkpoint: the base model; needed to compute missing ranks of model-based methods.
        granularity: ``element`` ranks every channel value (the ROAR code), ``pixel`` whole pixels.
        score: ``abs`` (default), ``square`` or ``raw`` attribution values are ranked.
        fill: ``channel_mean`` (the training per-channel mean, as the paper), ``image_mean``,
            ``noisy_linear`` (ROAD's imputation, Rong, Leemann et al. ICML 2022) or ``blur``
            (a Gaussian-blurred copy of the image); see :mod:`roar.data.imputation`.
        fill_sigma: the ``blur`` fill's Gaussian std, in pixels (> 0).
        fill_noise_std: std of the noise ``noisy_linear`` adds to imputed values (ROAD: 0.01);
            seeded by ``tie_seed`` and each image's global index.
        fill_tol: ``noisy_linear`` solves its linear system to this max abs residual (pixel units).
        fill_max_iter: ``noisy_linear``'s conjugate gradient steps at most; a batch not solved to
            ``fill_tol`` by then stops the run with the residual named.
        random_mask: for ``method: random``: ``fixed`` (one seeded mask per image, default) or
            ``fresh`` (a new mask every time an image is read, like the ROAR code's dropout).
        target: the class explained: ``predicted`` by the base model (default) or the ``label``.
        tie_seed: seed of the rank tie-breaking.
        method_params: the method's parameters (e.g. ``{"nt_samples": 25}``).
        attribution_batch_size: images per attribution call when ranks must be computed.
        attribution_device: ``auto``, ``cpu`` or ``cuda``.
        max_device_ranks_bytes: rank tables up to this size are held on the device (one index
            per batch); larger ones (ImageNet) stay memory-mapped and each batch reads its rows.
        attribution_progress: progress bars and reuse messages while ranks are computed or found.
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
        *,
        method: str = "random",
        threshold: float = 0.0,
        mode: Literal["roar", "kar"] = "roar",
        store: str = "runs/attributions",
        base_checkpoint: str | None = None,
        granularity: Literal["element", "pixel"] = "element",
        score: Literal["abs", "square", "raw"] = "abs",
        fill: Literal["channel_mean", "image_mean", "noisy_linear", "blur"] = "channel_mean",
        fill_sigma: float = DEFAULT_SIGMA,
        fill_noise_std: float = DEFAULT_NOISE_STD,
        fill_tol: float = DEFAULT_TOL,
        fill_max_iter: int = DEFAULT_MAX_ITER,
        random_mask: Literal["fixed", "fresh"] = "fixed",
        target: Literal["predicted", "label"] = "predicted",
        tie_seed: int = 0,
        method_params: dict[str, Any] | None = None,
        attribution_batch_size: int = 256,
        attribution_device: str = "auto",
        max_device_ranks_bytes: int = 2 << 30,
        attribution_progress: bool = True,
    ) -> None:
        from roar.attribution.compute import check_method

        check_method(method, method_params)
        if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        check_mode(mode)
        check_granularity(granularity)
        check_score(score)
        if fill not in FILLS:
            raise ValueError(f"unknown fill {fill!r}; valid choices: {', '.join(FILLS)}")
        check_imputation_settings(sigma=fill_sigma, noise_std=fill_noise_std, tol=fill_tol, max_iter=fill_max_iter)
        if random_mask not in RANDOM_MASKS:
            raise ValueError(f"unknown random_mask {random_mask!r}; valid choices: {', '.join(RANDOM_MASKS)}")
        super().__init__(
            source=source, root=root, download=download, image_size=image_size, batch_size=batch_size,
            val_fraction=val_fraction, num_workers=num_workers, augment=augment, crop_padding=crop_padding,
            seed=seed, label_permutation=label_permutation, stats_samples=stats_samples, source_options=source_options,
        )  # fmt: skip
        self.method = method
        self.threshold = float(threshold)
        self.mode = mode
        self.store = store
        self.base_checkpoint = base_checkpoint
        self.granularity = granularity
        self.score = score
        self.fill = fill
        self.fill_options = fill_options(fill, sigma=fill_sigma, noise_std=fill_noise_std, tol=fill_tol, max_iter=fill_max_iter, seed=tie_seed)
        self.random_mask = random_mask
        self.target = target
        self.tie_seed = tie_seed
        self.method_params = dict(method_params or {})
        self.attribution_batch_size = attribution_batch_size
        self.attribution_device = attribution_device
        self.max_device_ranks_bytes = max_device_ranks_bytes
        self.attribution_progress = attribution_progress
        self.ranks: torch.Tensor | None = None
        self._memmaps: tuple[np.ndarray, np.ndarray] | None = None
        self._device_ranks: dict[torch.device, torch.Tensor] = {}
        self._fill = torch.tensor(self.channel_mean)

    @property
    def protocol(self) -> dict[str, Any]:
        """The protocol choices that move results: recorded with every run."""
        return {
            "method": self.method, "threshold": self.threshold, "mode": self.mode, "granularity": self.granularity,
            "score": self.score, "fill": self.fill, "random_mask": self.random_mask, "target": self.target,
            "tie_seed": self.tie_seed, "method_params": self.method_params,
            **{f"fill_{k}": v for k, v in self.fill_options.items() if k != "seed"},
        }  # fmt: skip

    @property
    def masks_fresh(self) -> bool:
        return self.method == "random" and self.random_mask == "fresh"

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before `setup` on all of them, so under
        # DDP the ranks are computed once and the other ranks only read the finished entry.
        if self.threshold > 0 and not self.masks_fresh:
            self.load_ranks()

    def setup(self, stage: str | None = None) -> None:
        if self.ranks is not None or self._memmaps is not None or self.threshold == 0 or self.masks_fresh:
            return
        train, test = self.load_ranks(announce=False)
        if train.nbytes + test.nbytes <= self.max_device_ranks_bytes:
            self.ranks = self._as_table(np.concatenate([np.asarray(train), np.asarray(test)]))
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
        from roar.attribution.compute import compute_ranks

        trainer = getattr(self, "trainer", None)
        ranks = compute_ranks(
            self, self.method, self.store,
            checkpoint=self.base_checkpoint, method_params=self.method_params, granularity=self.granularity,
            score=self.score, target=self.target, tie_seed=self.tie_seed, batch_size=self.attribution_batch_size,
            device=self.attribution_device,
            progress=announce and self.attribution_progress and (trainer is None or trainer.is_global_zero),
        )  # fmt: skip
        return ranks["train"], ranks["test"]

    def _ranks_on(self, device: torch.device) -> torch.Tensor:
        # One copy per device: the whole table is a few hundred MB at most (CIFAR-10, int32),
        # and a lookup by index on the device beats shipping ranks with every batch.
        if device not in self._device_ranks:
            self._device_ranks[device] = self.ranks.to(device)
        return self._device_ranks[device]

    def mask(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.threshold == 0:
            return images
        if self.masks_fresh:
            n = num_features(tuple(images.shape[1:]), self.granularity)
            scores = torch.rand(len(images), n, device=images.device)
            ranks = ranks_from_scores(scores, indices, seed=self.tie_seed)
        else:
            self.setup()
            if self._memmaps is not None:
                ranks = self._rows_from_memmaps(indices).to(images.device, non_blocking=True)
            else:
                ranks = self._ranks_on(images.device)[indices]
        fill = self.fill if self.fill != "channel_mean" else self._fill.to(images.device, images.dtype)
        return mask_images(images, ranks, self.threshold, self.mode, fill, self.granularity, indices=indices, fill_options=self.fill_options)
