"""The six built-in gradient methods, each computed by captum (never re-implemented here).

- ``gradient``: the plain gradient of the target logit, signed (Simonyan, Vedaldi & Zisserman,
  "Deep Inside Convolutional Networks", ICLR workshop 2014).
- ``input_x_gradient``: input times gradient (Shrikumar et al., "Not Just a Black Box:
  Learning Important Features Through Propagating Activation Differences", arXiv 2016).
- ``integrated_gradients``: path integral of gradients from a baseline (Sundararajan, Taly &
  Yan, "Axiomatic Attribution for Deep Networks", ICML 2017).
- ``guided_backprop``: gradients with negative signals zeroed at every ReLU (Springenberg et al.,
  "Striving for Simplicity: The All Convolutional Net", ICLR workshop 2015).
- ``guided_gradcam``: guided backprop times the upsampled Grad-CAM map of a conv layer
  (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017).
- ``gradient_shap``: expected gradients between random reference images and the input
  (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017).

Each is registered with :func:`roar.attribution.registry.register_method`, the decorator a
user's method uses too; any other captum class runs through
:class:`roar.attribution.captum_adapter.CaptumMethod` from a config alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import GradientShap as _CaptumGradientShap
from captum.attr import GuidedBackprop as _CaptumGuidedBackprop
from captum.attr import GuidedGradCam as _CaptumGuidedGradCam
from captum.attr import InputXGradient as _CaptumInputXGradient
from captum.attr import IntegratedGradients as _CaptumIntegratedGradients
from captum.attr import Saliency as _CaptumSaliency
from torch import Tensor, nn

from roar.attribution.captum_adapter import CaptumMethod, find_last_conv_block, get_layer
from roar.attribution.base import _STREAM_GRADIENT_SHAP, INTERPOLATE_MODES, ModelMethod, _seeded_global_rngs
from roar.attribution.checks import _choice, _image_tensor, _non_negative_float, _positive_int, _seed


class Gradient(CaptumMethod):
    """The signed gradient of the target logit (Simonyan et al., ICLR workshop 2014): captum's
    ``Saliency`` with ``abs=False`` through the generic adapter; ranking takes the absolute value later."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, captum_class=_CaptumSaliency, attribute_args={"abs": False})
        self.params = {}


class InputXGradient(CaptumMethod):
    """Input times gradient (Shrikumar et al., arXiv 2016): captum's ``InputXGradient`` through the generic adapter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, captum_class=_CaptumInputXGradient)
        self.params = {}


class IntegratedGradients(ModelMethod):
    """Integrated Gradients (Sundararajan et al., ICML 2017), via captum.

    Args:
        model: the classifier.
        n_steps: points on the straight path from the baseline to the input.
        baseline: the reference input: a number (default 0, a black image) or a tensor of one
            image's shape ``(C, H, W)`` (or ``(1, C, H, W)``), used for every sample.
        internal_batch_size: captum evaluates the ``n_steps`` path points in batches of this
            many (default: all at once); set it to bound memory.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int = 50,
        baseline: float | Tensor = 0.0,
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        self.n_steps = _positive_int("n_steps", n_steps)
        if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            self.baseline: float | Tensor = float(baseline)
        else:
            self.baseline = _image_tensor("baseline", baseline, (3, 4))
            if self.baseline.dim() == 4 and self.baseline.shape[0] != 1:
                raise ValueError(f"baseline must be one image (C, H, W), got shape {tuple(self.baseline.shape)}")
        self.internal_batch_size = None if internal_batch_size is None else _positive_int("internal_batch_size", internal_batch_size)
        self.params = {"n_steps": self.n_steps, "baseline": self.baseline, "internal_batch_size": self.internal_batch_size}
        self._captum = _CaptumIntegratedGradients(self.model)

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        baseline: float | Tensor = self.baseline
        if isinstance(baseline, Tensor):
            baseline = baseline.reshape(1, *baseline.shape[-3:])
            if baseline.shape[1:] != inputs.shape[1:]:
                raise ValueError(f"baseline has shape {tuple(baseline.shape[1:])} but inputs are {tuple(inputs.shape[1:])}")
            baseline = baseline.to(inputs.device, inputs.dtype).expand_as(inputs)
        return self._captum.attribute(
            inputs,
            baselines=baseline,
            target=target,
            n_steps=self.n_steps,
            internal_batch_size=self.internal_batch_size,
        )


@contextmanager
def _quiet_relu_hook_warning() -> Iterator[None]:
    # captum warns on every Guided Backprop call that it hooks the ReLUs; that is expected here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        yield


def check_relus_hookable(model: nn.Module, method: str) -> nn.Module:
    """captum's guided methods hook every ``nn.ReLU``: turn in-place ones off, refuse shared ones.

    An in-place ReLU's output cannot carry the backward hook; a module registered under two
    names receives the hook for every place it is used, which would silently corrupt the map.
    """
    seen: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.ReLU):
            module.inplace = False
            if id(module) in seen and seen[id(module)] != name:
                raise ValueError(
                    f"{method} cannot explain this model: one ReLU module is shared between {seen[id(module)]!r} and {name!r}; "
                    "give each use its own nn.ReLU()"
                )
            seen[id(module)] = name
    return model


class GuidedBackprop(CaptumMethod):
    """Guided Backpropagation (Springenberg et al., ICLR workshop 2015): captum's class through the generic adapter.

    captum hooks every ``nn.ReLU`` module: in-place ReLUs are turned off and a shared one is
    refused (:func:`check_relus_hookable`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(check_relus_hookable(model, "guided_backprop"), captum_class=_CaptumGuidedBackprop)
        self.params = {}

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        with _quiet_relu_hook_warning():
            return super()._attribute(inputs, target, references)


class GuidedGradCam(ModelMethod):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017), via captum.

    Args:
        model: the classifier.
        layer: dotted name of the conv layer Grad-CAM reads (``model.get_submodule`` syntax);
            default: the last conv block, found by :func:`find_last_conv_block` on the first
            call (``layer4`` for ResNets, ``conv3`` for ``small_cnn``).
        interpolate_mode: how the Grad-CAM map is upsampled to the input (captum's default,
            ``nearest``; the paper upsamples bilinearly).
    """

    def __init__(self, model: nn.Module, *, layer: str | None = None, interpolate_mode: str = "nearest") -> None:
        super().__init__(check_relus_hookable(model, "guided_gradcam"))
        self.interpolate_mode = _choice("interpolate_mode", interpolate_mode, INTERPOLATE_MODES)
        self.layer = layer
        self._captum: _CaptumGuidedGradCam | None = None
        if layer is not None:
            self._captum = _CaptumGuidedGradCam(self.model, get_layer(self.model, layer))
        self.params = {"layer": layer, "interpolate_mode": interpolate_mode}

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        if self._captum is None:
            self.layer = find_last_conv_block(self.model, inputs[:1])
            self._captum = _CaptumGuidedGradCam(self.model, get_layer(self.model, self.layer))
        with _quiet_relu_hook_warning():
            return self._captum.attribute(inputs, target=target, interpolate_mode=self.interpolate_mode)


class GradientShap(ModelMethod):
    """GradientSHAP (Lundberg & Lee, NeurIPS 2017), via captum: the expected value over random
    references r and random points on the path from r to x of ``(x - r) * gradient``.

    Args:
        model: the classifier.
        baselines: the reference images ``(N, C, H, W)`` the references are drawn from. Default:
            the images of the batch being attributed, standing in for "a small set of training
            images". So the map then depends on the batch; an image that draws itself as its
            reference contributes a zero estimate (a 1/B share on average), and a batch of one
            image falls back to a black reference. Pass a fixed tensor for batch-independent maps.
        n_samples: draws per image (captum's default, 5).
        stdevs: std of Gaussian noise added to the input for each draw (captum's default, 0).
        seed: seeds the draws (mixed with the batch's sample indices), so a call is reproducible.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        baselines: Tensor | None = None,
        n_samples: int = 5,
        stdevs: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(model)
        self.baselines = None
        if baselines is not None:
            self.baselines = _image_tensor("baselines", baselines, (3, 4))
            if self.baselines.dim() == 3:
                self.baselines = self.baselines.unsqueeze(0)
            if self.baselines.shape[0] == 0:
                raise ValueError("baselines must hold at least one reference image")
        self.n_samples = _positive_int("n_samples", n_samples)
        self.stdevs = _non_negative_float("stdevs", stdevs)
        self.seed = _seed(seed)
        self.params = {"baselines": self.baselines, "n_samples": self.n_samples, "stdevs": self.stdevs, "seed": self.seed}
        self._captum = _CaptumGradientShap(self.model)
        self._state = np.random.RandomState(self.seed)

    def _begin(self, inputs: Tensor, indices: Tensor) -> None:
        entropy = [self.seed, _STREAM_GRADIENT_SHAP, *indices.tolist()]
        self._state = np.random.RandomState(np.random.SeedSequence(entropy).generate_state(4))

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        if self.baselines is not None:
            if self.baselines.shape[1:] != inputs.shape[1:]:
                raise ValueError(f"baselines have shape {tuple(self.baselines.shape[1:])} but inputs are {tuple(inputs.shape[1:])}")
            refs = self.baselines.to(inputs.device, inputs.dtype)
        elif references.shape[0] > 1:
            refs = references.detach()
        else:
            refs = torch.zeros_like(references)
        with _seeded_global_rngs(self._state, inputs.device):
            return self._captum.attribute(
                inputs, baselines=refs, target=target, n_samples=self.n_samples, stdevs=self.stdevs
            )

