"""What a researcher brings: a datamodule, a network, methods (good and broken). The tests name
them by import path in configs, exactly as a user's own package would be named."""

import os

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from roar.attribution import ModelMethod, register_method


class DigitPairs(Dataset):
    """scikit-learn's 8x8 digits as (image, label) pairs: the contract, nothing more."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]).unsqueeze(0), int(self.labels[i])


class TinyDigits(LightningDataModule):
    """A user's own LightningDataModule (no roar base class): 8 px digits, a fixed split."""

    def __init__(self, batch_size: int = 64, test_every: int = 5) -> None:
        super().__init__()
        self.batch_size, self.test_every = batch_size, test_every

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = (bunch.images / 16.0).astype(np.float32)
        test = np.arange(len(images)) % self.test_every == 0
        self.train, self.test = DigitPairs(images[~test], bunch.target[~test]), DigitPairs(images[test], bunch.target[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.batch_size)


class TripletDigits(TinyDigits):
    """Breaks the contract: its datasets yield dicts, not (image, label)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"image": x, "label": y} for x, y in self.train], batch_size=self.batch_size)


class TwoLayerNet(nn.Module):
    """A user's nn.Module, built by class path with init args."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def gradient_times_two(model, inputs, target, scale: float = 2.0):
    """A plain function by import path: ``scale`` times the gradient of the target logit."""
    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
    return scale * grad


@register_method("center_weighted_gradient")
class CenterWeightedGradient(ModelMethod):
    """A registered class: the gradient, weighted by closeness to the image centre."""

    def __init__(self, model: nn.Module, *, power: float = 1.0) -> None:
        super().__init__(model)
        self.power = power
        self.params = {"power": power}

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(self.model(inputs).gather(1, target[:, None]).sum(), inputs)
        h, w = inputs.shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        weight = (2 - (ys**2 + xs**2)).clamp_min(0).pow(self.power).to(inputs.device)
        return grad * weight


def wrong_shape(model, inputs, target):
    return inputs.sum(dim=1)


def not_finite(model, inputs, target):
    return torch.full_like(inputs, float("nan"))


def raises(model, inputs, target):
    raise RuntimeError("my method is broken")


class FailingRetrains(Callback):
    """A user's callback with a bug that every retrain (not the base model or the reference) meets."""

    def on_train_epoch_end(self, trainer, pl_module):
        if any(f"{os.sep}runs{os.sep}{mode}{os.sep}" in str(trainer.default_root_dir) for mode in ("roar", "kar")):
            raise RuntimeError("the user's callback broke")
