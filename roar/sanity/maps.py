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
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import Dataset

from roar.attribution import TARGETS, AttributionMethod, get_method, resolve_target
from roar.attribution.registry import accepted_params, needs_model, resolved_params
from roar.sanity.batched import can_stack, snapshot, stacked_explain
from roar.sanity.randomization import ORDERS, randomization_steps
from roar.sanity.revisited import EMPRT, SMPRT, Smoothing
from roar.sanity.shared_forward import SharedSteps, can_share, explain_steps
from roar.sanity.settings import SanitySettings, as_settings
from roar.sanity.similarity import aggregate_channels, compare_maps, list_metrics, normalize_maps

DATA_CHECK = "data"
CHECKS = (*ORDERS, DATA_CHECK, SMPRT, EMPRT)
"""Check names as they appear in keys and in ``sanity.csv``: the randomisation orders, ``data``,
then sMPRT and eMPRT (Hedström et al. 2023)."""

DATA_LAYER = "permuted_labels"
"""The ``layer`` of the data-randomisation row: the whole model, trained on permuted labels."""

CONTROL = "noise"
"""The control of Binder et al. (2022): i.i.d. Gaussian maps that never read the model."""

DEFAULT_METHODS = ("gradient", "guided_backprop", CONTROL)
DEFAULT_STACK = 8
"""Randomised models explained together by the batched path (bounds the memory of the kept weights)."""
DEFAULT_METRICS = ("spearman", "spearman_abs", "ssim", "hog")


# --------------------------------------------------------------------------------------------
# Argument checks: run before anything is computed
# --------------------------------------------------------------------------------------------


def _names(kind: str, values: Iterable[str] | str, choices: Sequence[str]) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        raise ValueError(f"{kind} is empty; valid {kind}: {', '.join(choices)}")
    for value in values:
        if value not in choices:
            raise ValueError(f"unknown {kind[:-1]} {value!r}; valid {kind}: {', '.join(choices)}")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(f"{kind} lists {', '.join(map(repr, duplicates))} more than once")
    return values


def check_metrics(metrics: Iterable[str] | str) -> list[str]:
    """The metric names, checked against :func:`roar.sanity.similarity.list_metrics`."""
    return _names("metrics", metrics, list_metrics())


def check_orders(orders: Iterable[str] | str) -> list[str]:
    """The randomisation orders, checked against :data:`roar.sanity.randomization.ORDERS`."""
    return _names("orders", orders, ORDERS)


def check_stack(stack: Any) -> int | str:
    """``stack``: ``auto`` or a positive integer, the models explained per batched call (1: one by one)."""
    if stack == "auto":
        return stack
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise ValueError(f"stack must be 'auto' or a positive integer (models per batched call; 1 = one by one), got {stack!r}")
    return int(stack)


def resolve_stack(stack: int | str, network: nn.Module, images: Tensor) -> int:
    """``auto``: :data:`DEFAULT_STACK` for a small model (at most 12M parameters, images at most
    64 px) on CUDA, where one such model leaves the device idle; else 1. On a CPU the work is
    compute-bound and the batched call was measured no faster (``benchmarks/sanity_mprt.py``);
    a large model's K stacked copies and their activations would cost K times the memory.
    """
    if stack != "auto":
        return check_stack(stack)
    small = sum(p.numel() for p in network.parameters()) <= 12_000_000 and max(images.shape[-2:]) <= 64
    return DEFAULT_STACK if images.device.type == "cuda" and small else 1


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    return target


_MODEL_SPECIFIC_PARAMS = frozenset({"layer"})


class _Probe(nn.Module):
    """A tiny conv net to build methods on while checking their parameters (nothing is run)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x)).flatten(1)


def check_methods(
    methods: Iterable[str] | str, method_params: Mapping[str, Mapping[str, Any]] | None = None
) -> list[str]:
    """The method names and their parameters, checked by building each method once.

    Args:
        methods: registry keys (see :func:`roar.attribution.list_methods`).
        method_params: optional ``{method: {param: value}}``; entries for methods not in
            ``methods`` are checked and ignored.

    Returns:
        The method names as a list.

    Raises:
        ValueError: for an unknown method (the message lists the valid ones), or an unknown or
            invalid parameter.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError("methods is empty; name at least one attribution method (e.g. [gradient, noise])")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise ValueError(f"methods lists {', '.join(map(repr, duplicates))} more than once")
    params = dict(method_params or {})
    with torch.random.fork_rng(devices=[]):  # initialising the probe must not move the caller's random stream
        probe = _Probe()
    # Entries for methods not requested are checked too (a config may set parameters for
    # methods a command line then leaves out), and otherwise ignored.
    for name in dict.fromkeys([*methods, *params]):
        given = params.get(name) or {}
        if not isinstance(given, Mapping):
            raise ValueError(f"method_params[{name!r}] must be a mapping of parameter names to values, got {given!r}")
        resolved_params(name, dict(given))  # an unknown method, definition or parameter fails here, naming it
        # A layer name refers to the real model, not the probe: it is checked when the method
        # is first built on the model. Every other value is checked now.
        get_method(name, probe, **{k: v for k, v in given.items() if k not in _MODEL_SPECIFIC_PARAMS})
    return methods


# --------------------------------------------------------------------------------------------
# Models, batches and maps
# --------------------------------------------------------------------------------------------


class NormalizedNetwork(nn.Module):
    """``net(normalize(x))``: a classifier's network without the LightningModule around it.

    Module names match :class:`roar.models.classifier.ImageClassifier` (``normalize``, ``net``),
    so a layer name such as ``net.conv3`` means the same in both.
    """

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def explained_network(module: nn.Module) -> nn.Module:
    """What the sanity checks explain and randomise: ``net(normalize(x))`` where the module has
    both (the project's classifier), else the module itself.

    Leaving the LightningModule out keeps its trainer, metrics and compiled wrapper out of every
    copy the checks make. The returned wrapper shares the module's submodules: copy it before
    changing anything.
    """
    net, normalize = getattr(module, "net", None), getattr(module, "normalize", None)
    if isinstance(net, nn.Module) and isinstance(normalize, nn.Module):
        return NormalizedNetwork(normalize, net)
    return module


def select_batch(
    dataset: Dataset, num_images: int, seed: int = 0, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A fixed, seeded choice of images from a dataset, as one batch.

    Args:
        dataset: yields ``(image, label)`` or ``(image, label, index)`` (the project's datamodule
            yields the global sample index; without one, the position in ``dataset`` is used).
        num_images: how many images (all of them when the dataset is smaller).
        seed: seeds the choice; the chosen positions are sorted, so the batch is the same
            whatever the order of the draw.
        device: where to put the batch.

    Returns:
        ``(images (B, C, H, W) float, labels (B,) long, indices (B,) long)``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    size = len(dataset)
    if size == 0:
        raise ValueError("cannot pick sanity-check images from an empty dataset")
    generator = torch.Generator().manual_seed(int(seed))
    positions = torch.randperm(size, generator=generator)[: min(num_images, size)].sort().values.tolist()
    items = [dataset[p] for p in positions]
    images = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    indices = torch.as_tensor([int(item[2]) if len(item) > 2 else p for item, p in zip(items, positions)], dtype=torch.long)
    return images.to(device), labels.to(device), indices.to(device)


def build_methods(
    model: nn.Module | None,
    methods: Sequence[str],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> dict[str, AttributionMethod]:
    """Build each method on ``model``; ``seed`` goes to every method that takes one and has none given."""
    built = {}
    for name in methods:
        params = dict((method_params or {}).get(name) or {})
        if "seed" in accepted_params(name, params):
            params.setdefault("seed", seed)
        built[name] = get_method(name, model if needs_model(name, params) else None, **params)
    return built


def explain(
    methods: Mapping[str, AttributionMethod], images: Tensor, target: Tensor, indices: Tensor | None = None
) -> dict[str, Tensor]:
    """Every method's maps of the whole batch, one call each (no loop over images)."""
    return {name: method(images, target, indices) for name, method in methods.items()}


def compare(
    reference: Mapping[str, Tensor], maps: Mapping[str, Tensor], metrics: Sequence[str], settings: SanitySettings | None = None
) -> dict[str, dict[str, Tensor]]:
    """``{method: {metric: (B,) similarity}}`` between reference maps and other maps, per method."""
    options = as_settings(settings).map_options
    return {name: compare_maps(reference[name], maps[name], metrics, **options) for name in reference}


def fixed_target(model: nn.Module, images: Tensor, labels: Tensor | None = None, target: str = "predicted") -> Tensor:
    """The class every step explains: ``model``'s predicted class (default) or the true label.

    The prediction is made on a copy, so the model being trained is not even run.
    """
    check_target(target)
    if target == "label":
        return resolve_target(None, images, labels, "label")
    network = copy.deepcopy(explained_network(model))
    return resolve_target(network, images, None, "predicted")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimilarityRecord:
    """The per-image similarities of one (method, check, step, metric).

    Attributes:
        method: attribution method name.
        check: a randomisation order or ``data`` (see :data:`CHECKS`).
        step: 0 for the unrandomised copy, then 1, 2, ... (1 for the data check).
        layer: the layer randomised at this step, ``original`` at step 0, ``permuted_labels``
            for the data check.
        metric: similarity metric name.
        values: ``(B,)`` similarities, one per image, on the CPU.
        settings: the protocol details (:class:`~roar.sanity.settings.SanitySettings`).
    """

    method: str
    check: str
    step: int
    layer: str
    metric: str
    values: Tensor = field(repr=False)
    settings: SanitySettings = field(default_factory=SanitySettings)

    @property
    def n(self) -> int:
        return int(self.values.numel())

    @property
    def mean(self) -> float:
        return float(self.values.double().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation over images (0 for a single image)."""
        return float(self.values.double().std()) if self.n > 1 else 0.0

    def row(self) -> dict[str, Any]:
        """One ``sanity.csv`` row: method, check, step, layer, metric, mean, std, n, then the settings."""
        return {
            "method": self.method,
            "check": self.check,
            "step": self.step,
            "layer": self.layer,
            "metric": self.metric,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            **self.settings.row(),
        }


@dataclass
class CheckResult:
    """What one check produced.

    Attributes:
        check: a randomisation order or ``data``.
        layers: the ``layer`` of each step, in step order (``original`` first for the orders).
        records: one :class:`SimilarityRecord` per (step, method, metric).
        target: the classes explained, ``(B,)``.
        maps: with ``keep_maps``, ``{method: [maps of each step on the CPU]}``; step 0 of a
            randomisation order is the trained model's reference map, for the data check the
            trained model's then the permuted-label model's maps.
    """

    check: str
    layers: list[str]
    records: list[SimilarityRecord]
    target: Tensor
    maps: dict[str, list[Tensor]] | None = None

    def final(self) -> dict[tuple[str, str], float]:
        """``{(method, metric): mean}`` at the last step (after full randomisation, for cascading)."""
        last = max(r.step for r in self.records)
        return {(r.method, r.metric): r.mean for r in self.records if r.step == last}


def _records(
    check: str, step: int, layer: str, sims: Mapping[str, Mapping[str, Tensor]], settings: SanitySettings | None = None
) -> list[SimilarityRecord]:
    settings = as_settings(settings)
    return [
        SimilarityRecord(method, check, step, layer, metric, values.detach().float().cpu(), settings)
        for method, by_metric in sims.items()
        for metric, values in by_metric.items()
    ]


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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def display_maps(maps: Tensor) -> np.ndarray:
    """Channel-summed absolute maps, min-max normalised per image: ``(B, H, W)`` in ``[0, 1]``.

    Adebayo et al. (2018) show absolute-value maps this way in their figures.
    """
    return normalize_maps(aggregate_channels(maps.detach().cpu(), absolute=True)).numpy()


def _display_images(images: Tensor) -> np.ndarray:
    images = images.detach().cpu().float().clamp(0, 1)
    if images.shape[1] == 1:
        return images[:, 0].numpy()
    return images[:, :3].permute(0, 2, 3, 1).numpy()


def map_grid_figure(
    images: Tensor,
    maps: Sequence[Tensor],
    column_titles: Sequence[str],
    title: str | None = None,
    cell_inches: float = 1.1,
) -> Figure:
    """Rows: images; columns: the input, then one map per entry of ``maps`` (Adebayo et al. 2018, fig. 2).

    Args:
        images: ``(B, C, H, W)`` inputs in ``[0, 1]``.
        maps: one ``(B, C, H, W)`` batch of maps per column.
        column_titles: a title per map column (the input column is titled "input").
        title: the figure title.
        cell_inches: size of one cell.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (not registered with pyplot).
    """
    if len(maps) != len(column_titles):
        raise ValueError(f"{len(maps)} map columns but {len(column_titles)} column titles")
    shown_images = _display_images(images)
    shown_maps = [display_maps(m) for m in maps]
    rows, cols = shown_images.shape[0], 1 + len(shown_maps)
    fig = Figure(figsize=(cell_inches * cols, cell_inches * rows + (0.5 if title else 0.2)), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r in range(rows):
        axes[r, 0].imshow(shown_images[r], cmap="gray" if shown_images.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
        for c, shown in enumerate(shown_maps, start=1):
            axes[r, c].imshow(shown[r], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for c, name in enumerate(["input", *column_titles]):
        axes[0, c].set_title(name, fontsize=7, rotation=30 if len(name) > 8 else 0)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """The figure rendered to an ``(H, W, 3)`` uint8 RGB array (for a logger's image API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

