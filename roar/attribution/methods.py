"""Attribution methods: captum-backed gradient maps, their noisy ensembles, baselines and controls.

Every method is an object called as ``method(inputs, target, indices=None)`` on a batch of
images ``(B, C, H, W)`` in ``[0, 1]`` pixel space; it returns a detached float32 map of the same
shape on the inputs' device. Build them by name with :func:`roar.attribution.get_method`.

Gradient methods (all computed by captum, never re-implemented here):

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

Ensembles of any of them over noisy copies of the input (:class:`Ensemble`):

- ``_sg``: SmoothGrad, the mean of the estimates (Smilkov et al., "SmoothGrad: removing noise
  by adding noise", arXiv 2017);
- ``_sg_sq``: SmoothGrad-Squared, the mean of the squared estimates (Hooker et al., "A
  Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019);
- ``_var``: VarGrad, the (population) variance of the estimates (Adebayo et al., "Local
  Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values", ICLR
  workshop 2018).

Baselines and controls that need no model: ``random`` (a fixed seeded map per sample, the
ROAR random baseline), ``sobel`` (edge magnitude, the ROAR model-independent baseline),
``noise`` (fresh i.i.d. Gaussian maps every call, the control of Binder et al., "Shortcomings of
Top-Down Randomization-Based Sanity Checks for Evaluations of Deep Neural Network
Explanations", arXiv 2211.12486, 2022), and the synthetic benchmark's oracles ``ground_truth``
and ``inverted``.

Seeding. Whatever is random is drawn from generators seeded by the method's ``seed`` and, where
the draw belongs to one sample (``random``, ensemble noise), by that sample's global index, so
a sample's map does not depend on which batch it came in.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GradientShap as _CaptumGradientShap
from captum.attr import GuidedBackprop as _CaptumGuidedBackprop
from captum.attr import GuidedGradCam as _CaptumGuidedGradCam
from captum.attr import InputXGradient as _CaptumInputXGradient
from captum.attr import IntegratedGradients as _CaptumIntegratedGradients
from captum.attr import Saliency as _CaptumSaliency
from torch import Tensor, nn

TARGETS = ("predicted", "label")
"""What a map explains: the base model's predicted class (ROAR code) or the true label (ROAD)."""

NOISE_MODES = ("relative", "absolute")
INTERPOLATE_MODES = ("nearest", "bilinear", "bicubic", "area")

# Streams keep the per-sample generators of different purposes independent, so a sample's
# random-baseline map is not the same draw as its first SmoothGrad noise.
_STREAM_RANDOM_BASELINE = 1
_STREAM_ENSEMBLE_NOISE = 2
_STREAM_GRADIENT_SHAP = 3


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")
    return value


def _check_model(model: Any, method: str) -> nn.Module:
    if model is None:
        raise ValueError(f"attribution method {method!r} needs a model; pass model=<nn.Module>")
    if not isinstance(model, nn.Module):
        raise ValueError(f"attribution method {method!r} needs an nn.Module, got {type(model).__name__}")
    return model


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must have shape (B, C, H, W) with B >= 1, got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    return inputs


def _check_indices(indices: Any, inputs: Tensor) -> Tensor:
    """Per-sample ids as a CPU LongTensor; positions in the batch when none are given."""
    batch = inputs.shape[0]
    if indices is None:
        return torch.arange(batch)
    indices = torch.as_tensor(indices)
    if indices.shape != (batch,) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(
            f"indices must be an integer tensor of shape ({batch},), got {indices.dtype} {tuple(indices.shape)}"
        )
    if (indices < 0).any():
        raise ValueError("indices must be non-negative sample ids")
    return indices.detach().to("cpu", torch.long)


def _check_target(target: Any, inputs: Tensor) -> Tensor:
    batch = inputs.shape[0]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = torch.full((batch,), int(target), dtype=torch.long)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be an int or an integer tensor of shape ({batch},), got {type(target).__name__}")
    if target.dim() == 0:
        target = target.expand(batch)
    if target.shape != (batch,) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of shape ({batch},), got {target.dtype} {tuple(target.shape)}")
    if (target < 0).any():
        raise ValueError("target classes must be non-negative")
    return target.detach().to(inputs.device, torch.long)


def _image_tensor(name: str, value: Any, ndim: tuple[int, ...]) -> Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}") from None
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tensor.dim() not in ndim:
        raise ValueError(f"{name} must be a tensor with {' or '.join(map(str, ndim))} dims, got shape {tuple(tensor.shape)}")
    return tensor.detach()


# --------------------------------------------------------------------------------------------
# Seeding and model-mode helpers
# --------------------------------------------------------------------------------------------


def _derived_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from small integers (seed, stream, index, ...)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint64)[0] >> 1)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode (BatchNorm statistics, no dropout), then restore every module's mode.

    Restoring matters because the sanity-check callbacks attribute in the middle of a fit.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _seeded_global_rngs(state: np.random.RandomState, device: torch.device) -> Iterator[None]:
    """Run captum code that draws from NumPy's and torch's global RNGs from our own state.

    captum's GradientShap draws its reference images and interpolation points with
    ``np.random`` and its input noise with ``torch.normal``: swapping our state in makes a map
    reproducible under a fixed seed, and restoring the global states afterwards keeps the
    caller's random streams untouched.
    """
    saved = np.random.get_state()
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(int(state.randint(2**62)))
            if cuda:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(int(state.randint(2**62)))
            np.random.set_state(state.get_state())
            yield
            state.set_state(np.random.get_state())
    finally:
        np.random.set_state(saved)


def resolve_target(
    model: nn.Module | None,
    inputs: Tensor,
    labels: Tensor | None = None,
    target: str = "predicted",
) -> Tensor:
    """The class each map explains.

    Args:
        model: the base model; needed for ``target="predicted"``.
        inputs: images ``(B, C, H, W)``.
        labels: true labels ``(B,)``; needed for ``target="label"``.
        target: ``"predicted"`` (default): the model's arg-max class, as the ROAR code does;
            ``"label"``: the true label, as the ROAD code (Rong et al., ICML 2022) does.

    Returns:
        A LongTensor ``(B,)`` on the inputs' device.
    """
    _choice("target", target, TARGETS)
    inputs = _check_inputs(inputs)
    if target == "label":
        if labels is None:
            raise ValueError('target="label" needs labels')
        return _check_target(labels, inputs)
    model = _check_model(model, 'resolve_target(target="predicted")')
    with _eval_mode(model), torch.no_grad():
        logits = model(inputs)
    if logits.dim() != 2 or logits.shape[0] != inputs.shape[0]:
        raise ValueError(f"model must return logits of shape (B, num_classes), got {tuple(logits.shape)}")
    return logits.argmax(dim=1).to(torch.long)


# --------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------


class AttributionMethod:
    """Something that maps a batch of images to a batch of attribution maps of the same shape.

    Attributes:
        name: the registry key it was built under (set by ``get_method``).
        params: the parameters it was built with, defaults filled in (for fingerprints).
        needs_model: whether it reads the model at all.
    """

    needs_model: ClassVar[bool] = False
    name: str = ""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def __call__(self, inputs: Tensor, target: Any = None, indices: Any = None) -> Tensor:
        """Attribute a batch.

        Args:
            inputs: images ``(B, C, H, W)``, floating point.
            target: the class to explain, an int or a LongTensor ``(B,)``; model-based methods
                use the model's predicted class when it is None, the others ignore it.
            indices: per-sample ids ``(B,)`` (the datamodule's global sample index), used to
                seed per-sample draws; the positions in the batch when None.

        Returns:
            A detached float32 tensor with the inputs' shape, on the inputs' device.
        """
        inputs = _check_inputs(inputs)
        indices = _check_indices(indices, inputs)
        # Attribution needs autograd even when called from a validation loop in inference mode.
        with torch.inference_mode(False):
            if inputs.is_inference():
                inputs = inputs.clone()
            maps = self._compute(inputs.detach(), target, indices)
        return maps.detach().to(device=inputs.device, dtype=torch.float32).contiguous()

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        shown = {k: (f"Tensor{tuple(v.shape)}" if isinstance(v, Tensor) else v) for k, v in self.params.items()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class ModelMethod(AttributionMethod):
    """A method that explains a model's logit for a target class with captum.

    Subclasses implement :meth:`_attribute` on one chunk of (possibly noisy) inputs; the
    ensembles call it on many chunks. ``references`` is always the caller's original batch,
    which GradientSHAP uses as its default reference set.
    """

    needs_model: ClassVar[bool] = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _check_model(model, type(self).__name__)

    def _compute(self, inputs: Tensor, target: Any, indices: Tensor) -> Tensor:
        with _eval_mode(self.model), torch.enable_grad():
            if target is None:
                target = resolve_target(self.model, inputs)
            target = _check_target(target, inputs)
            self._begin(inputs, indices)
            return self._explain(inputs, target, indices)

    def _begin(self, inputs: Tensor, indices: Tensor) -> None:
        """Reset per-call state (random streams) before a call's chunks are attributed."""

    def _explain(self, inputs: Tensor, target: Tensor, indices: Tensor) -> Tensor:
        return self._run(inputs, target, inputs)

    def _run(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        # A fresh leaf that requires grad: captum then neither warns nor touches the caller's tensor.
        return self._attribute(inputs.detach().requires_grad_(True), target, references).detach()

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# captum-backed gradient methods
# --------------------------------------------------------------------------------------------


class Gradient(ModelMethod):
    """The signed gradient of the target logit (Simonyan et al., ICLR workshop 2014), via captum's
    ``Saliency`` with ``abs=False``; ranking takes the absolute value later."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._captum = _CaptumSaliency(self.model)

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        return self._captum.attribute(inputs, target=target, abs=False)


class InputXGradient(ModelMethod):
    """Input times gradient (Shrikumar et al., arXiv 2016), via captum's ``InputXGradient``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._captum = _CaptumInputXGradient(self.model)

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        return self._captum.attribute(inputs, target=target)


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


class GuidedBackprop(ModelMethod):
    """Guided Backpropagation (Springenberg et al., ICLR workshop 2015), via captum.

    captum hooks every ``nn.ReLU`` module: the model's ReLUs must be modules, not in-place and
    not shared (``roar.models.build_model`` guarantees this).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._captum = _CaptumGuidedBackprop(self.model)

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        with _quiet_relu_hook_warning():
            return self._captum.attribute(inputs, target=target)


def find_last_conv_block(model: nn.Module, example: Tensor) -> str:
    """The default Grad-CAM layer: the outermost module around the last conv that stays spatial.

    Walks the ancestors of the model's last ``nn.Conv2d`` from the root down and returns the
    first whose output is a 4-D feature map: ``layer4`` for timm ResNets, ``conv3`` for
    ``small_cnn``, and ``net.layer4`` when the ResNet sits inside the Lightning classifier
    (whose ``net`` returns logits). One forward pass on ``example`` records the output shapes.

    Raises:
        ValueError: if the model has no ``nn.Conv2d``.
    """
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"guided_gradcam needs a convolutional layer but {type(model).__name__} has none; "
            "pass layer=<dotted module name>"
        )
    parts = convs[-1].split(".")
    ancestors = [".".join(parts[: i + 1]) for i in range(len(parts))]
    ranks: dict[str, int] = {}
    hooks = []
    for name in ancestors:
        def record(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            ranks[name] = output.dim() if isinstance(output, Tensor) else -1
        hooks.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with _eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return next((name for name in ancestors if ranks.get(name) == 4), convs[-1])


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
        super().__init__(model)
        self.interpolate_mode = _choice("interpolate_mode", interpolate_mode, INTERPOLATE_MODES)
        self.layer = layer
        self._captum: _CaptumGuidedGradCam | None = None
        if layer is not None:
            self._captum = _CaptumGuidedGradCam(self.model, self._module(layer))
        self.params = {"layer": layer, "interpolate_mode": interpolate_mode}

    def _module(self, layer: Any) -> nn.Module:
        if not isinstance(layer, str):
            raise ValueError(f"layer must be a dotted module name, got {type(layer).__name__}")
        try:
            return self.model.get_submodule(layer)
        except AttributeError:
            children = ", ".join(name for name, _ in self.model.named_children())
            raise ValueError(
                f"model has no layer {layer!r}; its top-level modules are: {children}"
            ) from None

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        if self._captum is None:
            self.layer = find_last_conv_block(self.model, inputs[:1])
            self._captum = _CaptumGuidedGradCam(self.model, self._module(self.layer))
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


# --------------------------------------------------------------------------------------------
# Ensembles
# --------------------------------------------------------------------------------------------

ENSEMBLE_REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # Each reduces the draws axis (dim 1) of a (samples, draws, C, H, W) tensor.
    "sg": lambda maps: maps.mean(dim=1),
    "sg_sq": lambda maps: maps.square().mean(dim=1),
    "var": lambda maps: maps.var(dim=1, correction=0),
}
"""Ensemble suffix -> reduction: SmoothGrad (Smilkov et al. 2017), SmoothGrad-Squared (Hooker et
al. 2019), VarGrad (Adebayo et al. 2018; population variance, as the paper's formula)."""


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
        self.nt_samples = _positive_int("nt_samples", nt_samples)
        self.noise_std = _non_negative_float("noise_std", noise_std)
        self.noise_mode = _choice("noise_mode", noise_mode, NOISE_MODES)
        self.max_batch_size = _positive_int("max_batch_size", max_batch_size)
        self.seed = _seed(seed)
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
        self.base._begin(inputs, indices)

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


# --------------------------------------------------------------------------------------------
# Baselines, controls and oracles (no model)
# --------------------------------------------------------------------------------------------


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
            raise ValueError(f"{type(self).__name__} needs weights=<tensor of one input's shape (C, H, W)>")
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


__all__ = [
    "AttributionMethod",
    "ENSEMBLE_REDUCTIONS",
    "Ensemble",
    "Gradient",
    "GradientShap",
    "GroundTruth",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "Inverted",
    "ModelMethod",
    "NoiseControl",
    "RandomBaseline",
    "Sobel",
    "TARGETS",
    "find_last_conv_block",
    "resolve_target",
]
