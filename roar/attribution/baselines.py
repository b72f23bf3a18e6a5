"""Baselines, controls and oracles: maps that read no model.

``random`` (a fixed seeded map per sample, the ROAR random baseline) and ``sobel`` (edge
magnitude, the ROAR model-independent baseline) of Hooker et al. (NeurIPS 2019); ``noise``
(fresh i.i.d. Gaussian maps every call, the control of Binder et al., "Shortcomings of Top-Down
Randomization-Based Sanity Checks for Evaluations of Deep Neural Network Explanations", arXiv
2211.12486, 2022); and the synthetic benchmark's oracles ``ground_truth`` and ``inverted``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from roar.attribution.base import _STREAM_RANDOM_BASELINE, AttributionMethod, _derived_seed, _generator
from roar.attribution.checks import _image_tensor, _seed


class RandomBaseline(AttributionMethod):
    """The ROAR random baseline (Hooker et al. 2019): uniform random scores, one fixed map per sample.

    A sample's map is drawn on the CPU from a generator seeded by ``(seed, index)``: the same
    index gives the same map on every call, in any batch, on any device.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = _seed(seed)
        self.params = {"seed": self.seed}

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        cpu = torch.device("cpu")
        maps = torch.stack([
            torch.rand(inputs.shape[1:], generator=_generator(_derived_seed(self.seed, _STREAM_RANDOM_BASELINE, int(i)), cpu))
            for i in indices
        ])
        return maps.to(inputs.device)


class Sobel(AttributionMethod):
    """Sobel edge magnitude of each channel, the ROAR model-independent baseline (Hooker et al. 2019).

    Equals ``skimage.filters.sobel`` applied to each channel: kernels ``[1, 2, 1]/4`` (smoothing)
    x ``[1, 0, -1]`` (derivative), magnitude ``sqrt((g_h^2 + g_v^2) / 2)``, and scipy's
    ``reflect`` border, which for a 3x3 kernel repeats the edge pixel (torch's ``replicate``).
    Computed with a grouped convolution so it runs on the inputs' device.
    """

    def __init__(self) -> None:
        super().__init__()

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        batch, channels, height, width = inputs.shape
        x = inputs.float().reshape(batch * channels, 1, height, width)
        smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device) / 4
        edge = torch.tensor([1.0, 0.0, -1.0], device=x.device)
        kernels = torch.stack([torch.outer(edge, smooth), torch.outer(smooth, edge)]).unsqueeze(1)
        grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
        magnitude = grads.square().sum(dim=1).div(2).sqrt()
        return magnitude.reshape(batch, channels, height, width)


class NoiseControl(AttributionMethod):
    """The sanity checks' control: i.i.d. standard Gaussian maps, zero pixel-wise covariance.

    Binder et al. (arXiv 2211.12486, 2022) show that such noise "passes" top-down model
    randomisation checks, so any method's score there should be read against it. The generator
    is seeded once, when the method is built; every call draws fresh maps from it (on the CPU,
    so the stream is the same on any device).
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = _seed(seed)
        self.params = {"seed": self.seed}
        self._generator = _generator(self.seed, torch.device("cpu"))

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        return torch.randn(inputs.shape, generator=self._generator).to(inputs.device)


class GroundTruth(AttributionMethod):
    """The synthetic benchmark's oracle: score = |w|, the true feature weights' magnitude.

    Args:
        weights: the informative weights, a tensor of one input's shape ``(C, H, W)`` (e.g.
            ``synthetic_linear``'s ``extras["informative_weights"]``).
    """

    def __init__(self, *, weights: Tensor | None = None) -> None:
        super().__init__()
        if weights is None:
            raise ValueError(
                f"{type(self).__name__} needs weights=<tensor of one input's shape (C, H, W)>: it is the oracle of the "
                "synthetic benchmark (source synthetic_linear, configs/benchmark/synthetic.yaml), which knows its data's true weights"
            )
        self.weights = _image_tensor("weights", weights, (3,))
        self.params = {"weights": self.weights}

    def _score(self) -> Tensor:
        return self.weights.abs()

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        if self.weights.shape != inputs.shape[1:]:
            raise ValueError(f"weights have shape {tuple(self.weights.shape)} but inputs are {tuple(inputs.shape[1:])}")
        return self._score().to(inputs.device, torch.float32).expand(inputs.shape).clone()


class Inverted(GroundTruth):
    """The oracle reversed: score = max|w| - |w|, so the least important feature ranks first."""

    def _score(self) -> Tensor:
        magnitude = self.weights.abs()
        return magnitude.max() - magnitude

