"""Sources that need no files: scikit-learn's digits and the synthetic linear benchmark of Hooker et al. (2019)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from roar.data.image_source import ImageSource, TensorImageDataset, resize_images


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
    return ImageSource.from_tensors(
        "digits", TensorImageDataset(images[train_idx], labels[train_idx]), TensorImageDataset(images[test_idx], labels[test_idx]),
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
    return ImageSource.from_tensors(
        "synthetic_linear", TensorImageDataset(images[:n_train], y[:n_train]), TensorImageDataset(images[n_train:], y[n_train:]),
        class_names=["z<=0", "z>0"], extras={"informative_weights": a.view(1, 4, 4), "distractor": d.view(1, 4, 4)},
    )
