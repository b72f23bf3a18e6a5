"""On-device augmentation: the random crop and flip a retrain applies after masking.

ROAR retrains on the masked images (Hooker et al., NeurIPS 2019), so augmentation runs on the
device *after* :meth:`~roar.data.datamodule.ImageDataModule.mask`: a crop or flip moves the
removed pixels with the image, and a mask always matches the image it was computed on. The
augmentation itself is the standard CIFAR one (He et al., CVPR 2016), in a few tensor ops.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("auto", "none", "crop", "crop_flip")

DEFAULT_AUGMENTATION = {
    "digits": "crop",
    "mnist": "crop",
    "fashion_mnist": "crop",
    "cifar10": "crop_flip",
    "image_folder": "crop_flip",
    "synthetic_linear": "none",
}
"""Digits and MNIST-like sets are not mirror-symmetric (a flipped 2 is no 2): crop only."""


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding, and a random horizontal flip, vectorised.

    The standard CIFAR augmentation (He et al. 2016), done on the device in a few tensor ops.
    """
    b, _, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch_idx = torch.arange(b, device=device)[:, None, None, None]
        chan_idx = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch_idx, chan_idx, rows, cols]
    if flip:
        do_flip = torch.rand(b, device=device, generator=generator) < 0.5
        images = torch.where(do_flip[:, None, None, None], images.flip(-1), images)
    return images
