"""Explain one fixed batch with several methods and compare the maps: the core of the sanity checks.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018) ask whether a saliency map
depends on what a model learned:

- *model randomisation* (section 4): re-initialise the trained network layer by layer and
  compare each map with the trained network's map (:func:`model_randomization`);
- *data randomisation* (section 5): compare the maps of a network trained on the true labels
  with those of the same architecture trained on randomly permuted labels
  (:func:`data_randomization`).

A method whose maps stay similar fails the check. A low similarity, however, is necessary but
not sufficient: Binder et al., "Shortcomings of Top-Down Randomization-Based Sanity Checks for
Evaluations of Deep Neural Network Explanations" (arXiv 2211.12486, 2022) point out that a map
of pure noise, which ignores the model entirely, "passes" too. That is why the ``noise`` control
is computed beside the real methods.

Choices made here (and documented in the report):

- The target class is fixed before any randomisation: by default the *original* (trained)
  model's predicted class, so every step explains the same logit and only the weights change.
  ``target="label"`` explains the true label instead.
- Every map is computed on a deep copy of the network (see :mod:`roar.sanity.randomization`),
  never on the model being trained, and all images are explained at once per step.
- Step 0 recomputes the trained copy's maps and compares them with the reference maps: 1 for a
  deterministic method, about 0 for the ``noise`` control, whose two draws share nothing.
- Maps are compared as the paper does by :mod:`roar.sanity.similarity` (signed or absolute
  channel sums, min-max normalisation for SSIM and HOG). A constant map scores 0, even against
  itself: Guided Grad-CAM, whose Grad-CAM factor can be zero for a whole image, can therefore
  score below 1 at step 0. Two independent noise maps score about 0 on the rank correlations
  and SSIM but about 0.15 on HOG: read every metric against the control.

The checks live here; their names, defaults and argument checks in :mod:`roar.sanity.arguments`,
the network, batch and maps in :mod:`roar.sanity.explaining`, the records in
:mod:`roar.sanity.records` and the figures in :mod:`roar.sanity.map_figures`, all re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from roar.attribution import AttributionMethod, resolve_target
from roar.attribution.registry import needs_model
from roar.sanity.arguments import (
    CHECKS, CONTROL, DATA_CHECK, DATA_LAYER, DEFAULT_METHODS, DEFAULT_METRICS, DEFAULT_STACK, check_methods, check_metrics, check_orders,
    check_stack, check_target, resolve_stack,
)  # fmt: skip
from roar.sanity.batched import can_stack, snapshot, stacked_explain
from roar.sanity.explaining import NormalizedNetwork, build_methods, compare, explain, explained_network, fixed_target, select_batch
from roar.sanity.map_figures import display_maps, figure_array, map_grid_figure
from roar.sanity.randomization import randomization_steps
from roar.sanity.records import CheckResult, SimilarityRecord, _records
from roar.sanity.revisited import SMPRT, Smoothing
from roar.sanity.shared_forward import SharedSteps, can_share, explain_steps
from roar.sanity.settings import SanitySettings, as_settings


def model_randomization(
    model: nn.Module,
    images: Tensor,
    order: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    target: Tensor | None = None,
    indices: Tensor | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    settings: SanitySettings | Mapping[str, Any] | None = None,
    stack: int | str = "auto",
    smoothing: Smoothing | None = None,
    share: bool = True,
) -> CheckResult:
    """The model-parameter randomisation test of Adebayo et al. (2018), on copies of ``model``.

    The network (see :func:`explained_network`) is copied once; step 0 explains the copy to get
    the reference maps, then every step of ``order`` (see
    :func:`roar.sanity.randomization.randomization_steps`) re-initialises layers of the copy,
    explains the whole batch again with every method and compares each map with its reference.

    The steps' models differ only in their weights: for the gradient methods (see
    :func:`roar.sanity.batched.can_stack`) the weights of up to ``stack`` steps are kept and all
    of them are explained in one batched call (:func:`roar.sanity.batched.stacked_explain`),
    which gives the same maps as explaining them one by one; other methods go step by step.

    Args:
        model: the trained classifier; it is never modified, run, or given gradients.
        images: ``(B, C, H, W)`` images in ``[0, 1]`` on the model's device.
        order: ``cascading``, ``independent`` or ``bottom_up``.
        methods: attribution method names (``noise`` is the control).
        metrics: similarity metric names.
        target: the classes to explain, ``(B,)``; default: the trained model's predictions,
            kept fixed across steps.
        indices: per-sample ids used to seed per-sample draws (the datamodule's global index).
        method_params: ``{method: {param: value}}``.
        seed: seeds the re-initialisation and the random methods.
        keep_maps: keep every step's maps (on the CPU) for figures.
        settings: batch-norm randomisation, map normalisation and channel reduction
            (:class:`~roar.sanity.settings.SanitySettings`), recorded in every row.
        stack: how many steps' models to explain in one batched call (1: one by one; ``auto``:
            :data:`DEFAULT_STACK` for a small model on CUDA, else 1; see :func:`resolve_stack`).
        smoothing: sMPRT (Hedström et al. 2023, :mod:`roar.sanity.revisited`): every model-based
            map is the mean over noisy copies of the input; the result's check is ``smprt``.
        share: with ``stack`` 1, explain the gradient methods of all steps with the layers the
            steps share computed once (:mod:`roar.sanity.shared_forward`); ``False``: one by one.

    Returns:
        A :class:`CheckResult` with steps ``0 .. number of layer groups``.
    """
    methods = check_methods(methods, method_params)
    metrics = check_metrics(metrics)
    check_orders(order)
    settings = as_settings(settings)
    check_stack(stack)
    # Lightning runs validation hooks in inference mode; maps need autograd, and every copy
    # made here must hold ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        images = images.clone() if images.is_inference() else images
        built: dict[str, AttributionMethod] = {}
        bound_to: nn.Module | None = None
        layers: list[str] = []
        maps: dict[int, dict[str, Tensor]] = {}
        stacked: list[str] = []
        sharing: SharedSteps | None = None
        pending: list[tuple[int, dict[str, Tensor]]] = []

        def flush() -> None:
            for name in stacked:
                out = stacked_explain(built[name], bound_to, [state for _, state in pending], images, target, indices)
                for (step_number, _), step_maps in zip(pending, out):
                    maps[step_number][name] = step_maps
            pending.clear()

        network = explained_network(model)
        stack = resolve_stack(stack, network, images)
        steps = randomization_steps(network, order, seed, include_original=True, batchnorm=settings.batchnorm)
        for step in steps:
            if step.model is not bound_to:
                # The steps mutate one copy; build the methods once on it, so the noise control
                # keeps drawing from one stream instead of repeating its first draw.
                built, bound_to = build_methods(step.model, methods, method_params, seed), step.model
                if smoothing is not None:
                    built = smoothing.wrap(built, method_params, seed)
                stacked = [n for n in methods if stack > 1 and can_stack(built[n])]
                shareable = [n for n in methods if share and stack == 1 and can_share(built[n])]
                sharing = SharedSteps.for_network(step.model) if shareable else None
                stacked = shareable if sharing else stacked
            if step.step == 0:
                if target is None:
                    target = resolve_target(step.model, images)
                indices = indices if indices is not None else torch.arange(len(images), device=images.device)
                one_by_one = {n: m for n, m in built.items() if n not in stacked}
                reference = explain(one_by_one, images, target, indices)
            maps[step.step] = explain(one_by_one, images, target, indices)
            layers.append(step.layer)
            if sharing:
                sharing.record(step)
            elif stacked:
                pending.append((step.step, snapshot(step.model)))
                if len(pending) == stack:
                    flush()
        if pending:
            flush()
        if sharing and stacked:
            for step_number, step_maps in explain_steps(sharing, built, stacked, images, target, indices).items():
                maps[step_number].update(step_maps)
        # A deterministic stacked method's step-0 map is its reference (one by one, the two are equal).
        reference = {name: reference[name] if name in reference else maps[0][name] for name in methods}
        check = order if smoothing is None else SMPRT
        records: list[SimilarityRecord] = []
        for step_number, layer in enumerate(layers):
            records += _records(check, step_number, layer, compare(reference, maps[step_number], metrics, settings), settings)
        kept = None
        if keep_maps:
            kept = {name: [(reference if k == 0 else maps[k])[name].cpu() for k in range(len(layers))] for name in methods}
    return CheckResult(check, layers, records, target.detach().cpu(), kept)


def data_randomization(
    model: nn.Module,
    permuted_model: nn.Module,
    images: Tensor,
    methods: Sequence[str] = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    target: Tensor | None = None,
    indices: Tensor | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    keep_maps: bool = False,
    settings: SanitySettings | Mapping[str, Any] | None = None,
) -> CheckResult:
    """The data randomisation test of Adebayo et al. (2018): true-label vs permuted-label model.

    Both networks are copied, explained on the same batch for the same target classes, and
    compared map by map.

    Args:
        model: the classifier trained on the true labels (never modified).
        permuted_model: the same architecture trained on permuted labels (never modified).
        images: ``(B, C, H, W)`` images on the models' device.
        methods, metrics, indices, method_params, seed, keep_maps, settings: as in :func:`model_randomization`.
        target: the classes to explain; default: ``model``'s predictions, for both models.

    Returns:
        A :class:`CheckResult` with one step, ``1``, layer ``permuted_labels``.

    Raises:
        ValueError: if the two models do not produce logits of the same shape on ``images``.
    """
    methods = check_methods(methods, method_params)
    metrics = check_metrics(metrics)
    settings = as_settings(settings)
    with torch.inference_mode(False), torch.enable_grad():
        images = images.clone() if images.is_inference() else images
        trained = copy.deepcopy(explained_network(model)).eval()
        permuted = copy.deepcopy(explained_network(permuted_model)).eval()
        with torch.no_grad():
            shapes = tuple(trained(images).shape), tuple(permuted(images).shape)
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"the permuted-label model gives logits of shape {shapes[1]} but the trained model {shapes[0]}: "
                "the reference checkpoint must have the same architecture, classes and input size"
            )
        if target is None:
            target = resolve_target(trained, images)
        trained_methods = build_methods(trained, methods, method_params, seed)
        # The same seed for both models (SmoothGrad's noise is the same for both, so only the
        # model differs), and the same instance of every model-free method, so the noise control
        # draws a fresh map for the second model instead of repeating the first.
        permuted_methods = build_methods(permuted, methods, method_params, seed)
        permuted_methods.update({n: m for n, m in trained_methods.items() if not needs_model(n, (method_params or {}).get(n))})
        reference = explain(trained_methods, images, target, indices)
        maps = explain(permuted_methods, images, target, indices)
    records = _records(DATA_CHECK, 1, DATA_LAYER, compare(reference, maps, metrics, settings), settings)
    kept = {m: [reference[m].cpu(), maps[m].cpu()] for m in methods} if keep_maps else None
    return CheckResult(DATA_CHECK, [DATA_LAYER], records, target.detach().cpu(), kept)


__all__ = [
    "CHECKS", "CONTROL", "DATA_CHECK", "DATA_LAYER", "DEFAULT_METHODS", "DEFAULT_METRICS", "DEFAULT_STACK", "CheckResult", "NormalizedNetwork",
    "SimilarityRecord", "build_methods", "check_methods", "check_metrics", "check_orders", "check_stack", "check_target", "compare",
    "data_randomization", "display_maps", "explain", "explained_network", "figure_array", "fixed_target", "map_grid_figure",
    "model_randomization", "resolve_stack", "select_batch",
]  # fmt: skip
