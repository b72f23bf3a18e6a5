"""Where a masking datamodule gets its ranks: the :class:`RankProvider` contract.

ROAR/KAR (Hooker et al., NeurIPS 2019) mask each image by a ranking of its features. The data
side only needs the ranks, not how they were made, so :class:`~roar.data.roar.RoarDataModule`
receives a provider instead of computing attributions itself: ``roar/data`` never imports
``roar/attribution``. The attribution package supplies the store-backed provider
(:class:`roar.attribution.ranks.StoreRanks`, ranks computed once with the base model and cached);
this module supplies the one that needs no model, :class:`FreshRandomRanks`.

A provider is chosen in a ``train.py fit`` config like any other class::

    data:
      class_path: roar.data.RoarDataModule
      init_args:
        threshold: 0.5
        ranks:
          class_path: roar.attribution.StoreRanks
          init_args: {method: gradient, store: runs/x/attributions, base_checkpoint: runs/x/base.ckpt}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from roar.data.ranking import check_granularity, num_features, ranks_from_scores


class RankProvider:
    """Ranks of every train-pool and test image, 0 = most important feature.

    Subclasses set :attr:`method` (the name results are recorded under) and :attr:`granularity`
    (``element`` or ``pixel``: what one ranked feature is), and implement :meth:`load`, or set
    :attr:`fresh` and implement :meth:`batch_ranks` for ranks drawn at every read.
    """

    method: str = "unnamed"
    granularity: str = "element"
    fresh: bool = False
    """True: ranks are drawn per batch by :meth:`batch_ranks` (nothing to load or store)."""

    def describe(self) -> dict[str, Any]:
        """The settings that move results (recorded with each run)."""
        return {"method": self.method, "granularity": self.granularity}

    def load(self, datamodule: Any, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(train, test)`` rank tables of shape ``(N, F)``, rows in the datamodule's sample order.

        Args:
            datamodule: the :class:`~roar.data.datamodule.ImageDataModule` being masked (its
                ``dataset_id`` identifies the images; ``num_train_pool`` offsets the test indices).
            progress: show progress while ranks are computed.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load() or set fresh = True")

    def batch_ranks(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` ranks of one batch, for providers with :attr:`fresh` set."""
        raise NotImplementedError(f"{type(self).__name__} loads its ranks; it draws none per batch")


class FreshRandomRanks(RankProvider):
    """A new random ranking every time an image is read, like the dropout-style random baseline
    of the ROAR code (Hooker et al. 2019). ``random_mask: fresh`` in a benchmark protocol."""

    method = "random"
    fresh = True

    def __init__(self, granularity: str = "element", tie_seed: int = 0) -> None:
        self.granularity = check_granularity(granularity)
        self.tie_seed = tie_seed

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "random_mask": "fresh", "tie_seed": self.tie_seed}

    def batch_ranks(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        n = num_features(tuple(images.shape[1:]), self.granularity)
        scores = torch.rand(len(images), n, device=images.device)
        return ranks_from_scores(scores, indices, seed=self.tie_seed)


__all__ = ["FreshRandomRanks", "RankProvider"]
