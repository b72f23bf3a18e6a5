"""The contract every attribution method keeps, and the seeding they share.

A method is an object called as ``method(inputs, target, indices=None)`` on a batch of images
``(B, C, H, W)`` in ``[0, 1]`` pixel space; it returns a detached float32 map of the same shape
on the inputs' device. :class:`AttributionMethod` is the base of the ones that read no model
(baselines, controls, oracles); :class:`ModelMethod` of the ones that explain a model's logit
(captum adapters, plain functions, the ensembles that wrap any of them).

The argument checks they share are in :mod:`roar.attribution.checks`.

Seeding. Whatever is random is drawn from generators seeded by the method's ``seed`` and, where
the draw belongs to one sample (``random``, ensemble noise), by that sample's global index, so
a sample's map does not depend on which batch it came in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from roar.attribution.checks import _check_indices, _check_inputs, _check_model, _check_target, _choice

TARGETS = ("predicted", "label")
"""What a map explains: the base model's predicted class (ROAR code) or the true label (ROAD)."""

NOISE_MODES = ("relative", "absolute")
INTERPOLATE_MODES = ("nearest", "bilinear", "bicubic", "area")

# Streams keep the per-sample generators of different purposes independent, so a sample's
# random-baseline map is not the same draw as its first SmoothGrad noise.
_STREAM_RANDOM_BASELINE = 1
_STREAM_ENSEMBLE_NOISE = 2
_STREAM_GRADIENT_SHAP = 3
_STREAM_CAPTUM = 4


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
    if not any(training for _, training in modes):  # a frozen base model: nothing to set or restore
        yield
        return
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

    Subclasses implement :meth:`attribute` on one chunk of (possibly noisy) inputs; the
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
        return self.attribute(inputs, target)

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        """A subclass's map of one chunk: ``inputs`` ``(B, C, H, W)`` require grad, ``target`` is ``(B,)``.

        What a user's own class overrides (the ensembles call it on noisy copies); built-ins that
        need the caller's whole batch (GradientSHAP's references) override ``_attribute`` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement attribute(inputs, target)")

