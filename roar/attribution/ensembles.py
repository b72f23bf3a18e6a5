"""Ensembles of any model-based method over noisy copies of the input.

- ``sg``: SmoothGrad, the mean of the estimates (Smilkov et al., "SmoothGrad: removing noise
  by adding noise", arXiv 2017);
- ``sg_sq``: SmoothGrad-Squared, the mean of the squared estimates (Hooker et al., "A
  Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019);
- ``var``: VarGrad, the (population) variance of the estimates (Adebayo et al., "Local
  Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values", ICLR
  workshop 2018).

Like captum's ``NoiseTunnel``, :class:`Ensemble` wraps *any* :class:`ModelMethod`: a built-in, a
captum class given by import path, or a user's function or registered class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from roar.attribution.base import _STREAM_ENSEMBLE_NOISE, NOISE_MODES, ModelMethod, _derived_seed, _generator
from roar.attribution.checks import _choice, _non_negative_float, _positive_int, _seed

ENSEMBLE_REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # Each reduces the draws axis (dim 1) of a (samples, draws, C, H, W) tensor.
    "sg": lambda maps: maps.mean(dim=1),
    "sg_sq": lambda maps: maps.square().mean(dim=1),
    "var": lambda maps: maps.var(dim=1, correction=0),
}
"""Ensemble suffix -> reduction: SmoothGrad (Smilkov et al. 2017), SmoothGrad-Squared (Hooker et
al. 2019), VarGrad (Adebayo et al. 2018; population variance, as the paper's formula)."""


def check_ensemble_settings(
    *, nt_samples: int = 25, noise_std: float = 0.15, noise_mode: str = "relative", max_batch_size: int = 256, seed: int = 0
) -> dict:
    """An ensemble's settings checked without a model, so a config's bad value is named when it is read."""
    return {
        "nt_samples": _positive_int("nt_samples", nt_samples), "noise_std": _non_negative_float("noise_std", noise_std),
        "noise_mode": _choice("noise_mode", noise_mode, NOISE_MODES), "max_batch_size": _positive_int("max_batch_size", max_batch_size),
        "seed": _seed(seed),
    }  # fmt: skip


class Ensemble(ModelMethod):
    """A base method averaged (or its variance taken) over noisy copies of each input.

    Each sample gets ``nt_samples`` copies ``x + eps``, eps ~ N(0, sigma^2), with sigma
    ``noise_std * (max(x) - min(x))`` (``relative``, the ROAR code's default) or ``noise_std``
    (``absolute``). The copies are attributed in batches of at most ``max_batch_size`` (whole
    samples together where they fit) rather than one by one. A sample's noise comes from a
    generator seeded by ``(seed, its index)``, so its map depends neither on the batch it came
    in nor on ``max_batch_size``.

    Args:
        base: the method whose estimates are combined.
        kind: ``sg``, ``sg_sq`` or ``var`` (see :data:`ENSEMBLE_REDUCTIONS`).
        nt_samples: noisy copies per image (25, the ROAR code's default; the paper says 15).
        noise_std: the noise level.
        noise_mode: ``relative`` or ``absolute``.
        max_batch_size: most noisy copies given to the base method at once (a memory cap).
        seed: seeds the noise.
    """

    def __init__(
        self,
        base: ModelMethod,
        kind: str,
        *,
        nt_samples: int = 25,
        noise_std: float = 0.15,
        noise_mode: str = "relative",
        max_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(base.model)
        self.base = base
        self.kind = _choice("ensemble", kind, tuple(ENSEMBLE_REDUCTIONS))
        checked = check_ensemble_settings(nt_samples=nt_samples, noise_std=noise_std, noise_mode=noise_mode, max_batch_size=max_batch_size, seed=seed)
        self.nt_samples, self.noise_std, self.noise_mode = checked["nt_samples"], checked["noise_std"], checked["noise_mode"]
        self.max_batch_size, self.seed = checked["max_batch_size"], checked["seed"]
        self._copies = 0  # noisy copies explained so far in this call, when nested (_run)
        self.params = {
            **base.params,
            "nt_samples": self.nt_samples,
            "noise_std": self.noise_std,
            "noise_mode": self.noise_mode,
            "max_batch_size": self.max_batch_size,
            "seed": self.seed,
        }

    def _sigma(self, inputs: Tensor) -> Tensor:
        """Noise std per sample, shape (B,)."""
        if self.noise_mode == "absolute":
            return torch.full((inputs.shape[0],), self.noise_std, device=inputs.device, dtype=inputs.dtype)
        flat = inputs.flatten(1)
        return self.noise_std * (flat.amax(dim=1) - flat.amin(dim=1))

    def _noise(self, sample: Tensor, index: int) -> Tensor:
        generator = _generator(_derived_seed(self.seed, _STREAM_ENSEMBLE_NOISE, index), sample.device)
        return torch.randn((self.nt_samples, *sample.shape), generator=generator, device=sample.device, dtype=sample.dtype)

    def _begin(self, inputs: Tensor, indices: Tensor) -> None:
        self._copies = 0
        self.base._begin(inputs, indices)

    def _run(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        # As the base of another ensemble (sMPRT of a SmoothGrad method, Hedström et al. 2023):
        # a chunk of the outer noisy copies, numbered on from the call's start so that each copy
        # draws its own noise, the same on every call.
        indices = torch.arange(self._copies, self._copies + inputs.shape[0], device=inputs.device)
        self._copies += inputs.shape[0]
        return self._explain(inputs.detach(), target, indices)

    def _explain(self, inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        draws = self.nt_samples
        sigma = self._sigma(inputs)
        reduce = ENSEMBLE_REDUCTIONS[self.kind]
        per_group = max(1, self.max_batch_size // draws)
        out = torch.empty(inputs.shape, device=inputs.device, dtype=torch.float32)
        for start in range(0, inputs.shape[0], per_group):
            stop = min(start + per_group, inputs.shape[0])
            x = inputs[start:stop]
            noise = torch.stack([self._noise(sample, int(i)) for sample, i in zip(x, indices[start:stop])])
            noisy = (x.unsqueeze(1) + noise * sigma[start:stop].view(-1, 1, 1, 1, 1)).flatten(0, 1)
            noisy_target = target[start:stop].repeat_interleave(draws)
            maps = torch.cat([
                self.base._run(noisy[c : c + self.max_batch_size], noisy_target[c : c + self.max_batch_size], inputs)
                for c in range(0, noisy.shape[0], self.max_batch_size)
            ])
            out[start:stop] = reduce(maps.float().view(stop - start, draws, *inputs.shape[1:]))
        return out

