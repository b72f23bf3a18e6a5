"""What ``python -m roar sanity`` runs: :class:`SanityReportConfig`, checked before anything is computed.

The settings of Adebayo et al.'s (NeurIPS 2018) model- and data-randomisation checks, the
``noise`` control and bottom-up order of Binder et al. (arXiv 2211.12486, 2022), and sMPRT/eMPRT
(Hedström et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from roar.models.factory import check_arch
from roar.registry import import_modules
from roar.sanity.maps import CONTROL, DEFAULT_METRICS, check_methods, check_metrics, check_orders, check_stack, check_target
from roar.sanity.randomization import ORDERS
from roar.sanity.revisited import Smoothing, check_bins
from roar.sanity.settings import SanitySettings
from roar.statistics import check_level

DEFAULT_REPORT_METHODS = (
    "gradient",
    "gradient_sg",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "guided_gradcam",
    CONTROL,
)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SanityReportConfig:
    """What ``python -m roar sanity`` runs.

    Attributes:
        data: :class:`~roar.data.datamodule.ImageDataModule` arguments (``label_permutation`` is set
            by the report: false for the model, true for the permuted-label model).
        model: :class:`~roar.models.classifier.ImageClassifier` arguments (``arch``, ``lr``...);
            classes, channels, size and channel statistics come from the data.
        trainer: ``lightning.Trainer`` settings of both trainings (``accelerator``, ``precision``,
            ``deterministic``...). ``max_epochs`` is ``epochs`` / ``permuted_epochs``; a fit config's
            ``logger`` and ``callbacks`` are not used (the report logs to ``<out>/logs``).
        epochs: training epochs of the true-label model.
        permuted_epochs: training epochs of the permuted-label model: enough to memorise the
            permuted training labels (train accuracy > 0.9) while test accuracy stays at chance.
        permuted_augment: augmentation of the permuted-label training (``none`` lets it memorise
            the exact images).
        imports: modules imported first, so that their ``@register_method`` decorators run (as a
            benchmark's ``imports:``).
        methods: attribution methods: registry keys or definitions with a ``name``
            (``{name: deeplift, class_path: captum.attr.DeepLift}``), as in a benchmark config.
        control: add the ``noise`` control of Binder et al. (2022) to the methods if missing.
        metrics: similarity metrics.
        orders: model-randomisation orders to run.
        data_check: also train the permuted-label model and run the data-randomisation check.
        num_images: images explained (a fixed, seeded choice).
        split: where the images come from (``test`` by default: images neither model trained on).
        target: ``predicted`` (the true-label model's class, fixed for every compared model) or ``label``.
        seed: seeds training, the choice of images, re-initialisation and random methods.
        method_params: ``{method: {param: value}}``.
        checkpoint: a true-label checkpoint to use instead of training one.
        permuted_checkpoint: a permuted-label checkpoint to use instead of training one.
        retrain: train again even if ``<out>`` holds matching checkpoints.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        progress: show progress; Lightning's per-epoch bars need ``verbose`` too.
        verbose: Lightning's bars, banners and known third-party warnings (:mod:`roar.quiet`); off by default.
        confidence_level: the level of the bootstrap intervals over images (0.95: 95%).
        batchnorm, normalization, reduction: protocol details, recorded in every row (see
            :mod:`roar.sanity.settings`): ``reset``/``keep_stats``, ``minmax``/``percentile``,
            ``sum_abs``/``abs_sum``.
        stack: randomised models explained per batched call (1: one by one; ``auto``: 8 for a small
            model on CUDA, else 1; the maps are the same either way).
        share: with one model per call, explain the gradient family for every randomisation step
            at once, each layer the steps share computed once (:mod:`roar.sanity.shared_forward`);
            ``false``: model by model. The maps are the same within float tolerance.
        smprt: also run sMPRT (Hedström et al. 2023): ``smprt_order`` randomisation with maps
            averaged over ``smprt_samples`` noisy copies at ``smprt_noise`` x the input range.
        emprt: also run eMPRT (Hedström et al. 2023): the rise in map entropy (``emprt_bins``
            bins, of ``|a|`` with ``emprt_abs``) after randomising every layer.
    """

    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    permuted_epochs: int = 60
    permuted_augment: Literal["none", "auto", "crop", "crop_flip"] = "none"
    imports: list[str] = field(default_factory=list)
    methods: list[str | dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_REPORT_METHODS))
    control: bool = True
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    orders: list[str] = field(default_factory=lambda: list(ORDERS))
    data_check: bool = True
    num_images: int = 16
    split: Literal["test", "val"] = "test"
    target: Literal["predicted", "label"] = "predicted"
    seed: int = 0
    method_params: dict[str, dict[str, Any]] | None = None
    checkpoint: str | None = None
    permuted_checkpoint: str | None = None
    retrain: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    confidence_level: float = 0.95
    batchnorm: Literal["reset", "keep_stats"] = "reset"
    normalization: Literal["minmax", "percentile"] = "minmax"
    reduction: Literal["sum_abs", "abs_sum"] = "sum_abs"
    stack: int | Literal["auto"] = "auto"
    share: bool = True
    smprt: bool = False
    smprt_samples: int = 50
    smprt_noise: float = 0.1
    smprt_order: Literal["cascading", "independent", "bottom_up"] = "cascading"
    emprt: bool = False
    emprt_bins: int = 100
    emprt_abs: bool = True
    verbose: bool = False

    def validate(self) -> None:
        """Check every choice before anything is computed.

        Raises:
            ValueError: an unknown method, metric, order, target or device (with the valid
                choices), or a non-positive count.
            FileNotFoundError: a given checkpoint that does not exist.
        """
        import_modules(self.imports)
        if not self.methods:  # checked before the control is added: the control alone compares nothing
            raise ValueError("methods is empty; name at least one attribution method (e.g. [gradient, guided_backprop]); the noise control is added to them")
        if self.control and CONTROL not in self.methods:
            self.methods = [*self.methods, CONTROL]
        self.methods = check_methods(self.methods, self.method_params)
        self.metrics = check_metrics(self.metrics)
        self.orders = check_orders(self.orders)
        check_target(self.target)
        check_arch(self.model.get("arch", "small_cnn"), self.model.get("arch_args"))
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid devices: {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available; valid devices here: auto, cpu")
        # An unknown batchnorm, normalization or reduction, or a bad sMPRT setting, fails here, naming the choices.
        _ = self.settings, self.smoothing
        check_orders(self.smprt_order)
        check_stack(self.stack)
        for name in ("epochs", "permuted_epochs", "num_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("checkpoint", "permuted_checkpoint"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name} not found: {path!r}")
        check_bins(self.emprt_bins)
        check_level(self.confidence_level)
        if "label_permutation" in self.data:
            raise ValueError("data.label_permutation is set by the report (false, then true); remove it from data")

    @property
    def settings(self) -> SanitySettings:
        return SanitySettings(self.batchnorm, self.normalization, self.reduction)

    @property
    def smoothing(self) -> Smoothing:
        return Smoothing(self.smprt_samples, self.smprt_noise)

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

