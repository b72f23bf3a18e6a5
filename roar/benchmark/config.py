"""The benchmark's configuration: what a ``configs/benchmark/*.yaml`` file may say.

Every protocol choice the published ROAR implementations disagree on is a setting here, with
the paper's choice as default, and is recorded in every result row (DESIGN.md, "Protocol choices").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from roar.attribution.registry import normalize_methods
from roar.data.imputation import DEFAULT_MAX_ITER, DEFAULT_NOISE_STD, DEFAULT_SIGMA, DEFAULT_TOL, check_imputation_settings
from roar.fit_config import plain as _plain
from roar.registry import import_modules

DEFAULT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Protocol:
    """How attributions become masks.

    Attributes:
        granularity: ``element`` ranks every channel value (the ROAR code), ``pixel`` whole pixels.
        score: the ranked quantity: ``abs`` of the attribution (default), ``square`` or ``raw``.
        fill: ``channel_mean`` of the training set (the paper), each ``image_mean``, ROAD's
            ``noisy_linear`` imputation (Rong, Leemann et al., ICML 2022) or a ``blur`` control
            (:mod:`roar.data.imputation`).
        fill_sigma: ``blur``: the Gaussian's std in pixels (> 0).
        fill_noise_std: ``noisy_linear``: std of the noise on imputed values (the ROAD code's 0.01).
        fill_tol: ``noisy_linear``: max abs residual its linear system is solved to (pixel units).
        fill_max_iter: ``noisy_linear``: conjugate gradient steps at most (a run that needs more fails, naming the residual).
        random_mask: ``fixed`` seeded mask per image (default) or ``fresh`` at every read (ROAR code).
        target: the class explained: ``predicted`` by the base model (ROAR code) or the true ``label`` (ROAD code).
        tie_seed: seed of the rank tie-breaking.
    """

    granularity: Literal["element", "pixel"] = "element"
    score: Literal["abs", "square", "raw"] = "abs"
    fill: Literal["channel_mean", "image_mean", "noisy_linear", "blur"] = "channel_mean"
    random_mask: Literal["fixed", "fresh"] = "fixed"
    target: Literal["predicted", "label"] = "predicted"
    tie_seed: int = 0
    fill_sigma: float = DEFAULT_SIGMA
    fill_noise_std: float = DEFAULT_NOISE_STD
    fill_tol: float = DEFAULT_TOL
    fill_max_iter: int = DEFAULT_MAX_ITER

    def fingerprint(self, fill: str | None = None) -> dict[str, Any]:
        """The settings that move results, under ``fill`` (default: ``self.fill``; a ``mode@fill``
        run's is its own): a fill's own settings only with that fill (so the fingerprints of
        constant-fill grids stay what they were before the imputing fills)."""
        fields = {k: v for k, v in asdict(self).items() if not k.startswith("fill_")}
        return {**fields, **self.fill_fingerprint(self.fill if fill is None else fill)}

    def fill_fingerprint(self, fill: str) -> dict[str, Any]:
        """What ``fill`` contributes to a fingerprint: its name and the settings that move its values."""
        from roar.data.roar import fill_options

        options = fill_options(fill, sigma=self.fill_sigma, noise_std=self.fill_noise_std, tol=self.fill_tol, max_iter=self.fill_max_iter, seed=self.tie_seed)
        return {"fill": fill, **{f"fill_{k}": v for k, v in options.items() if k != "seed"}}

    def validate(self) -> None:
        """Unknown fills and impossible fill settings fail here, naming the value, before any training."""
        from roar.data.roar import FILLS

        if self.fill not in FILLS:
            raise ValueError(f"unknown protocol.fill {self.fill!r}; valid choices: {', '.join(FILLS)}")
        check_imputation_settings(sigma=self.fill_sigma, noise_std=self.fill_noise_std, tol=self.fill_tol, max_iter=self.fill_max_iter)


@dataclass
class BaseModel:
    """The base model whose attributions rank the features.

    Attributes:
        checkpoint: reuse this checkpoint instead of training one (``<out>/base.ckpt`` otherwise).
        max_epochs: epochs of the base training (``None``: the retrains' ``trainer.max_epochs``).
        seed: seed of the base training.
        min_accuracy: a base model whose test accuracy is not above this is refused (never kept
            as ``base.ckpt``): its attributions would rank noise. ``None``: chance + 0.05.
    """

    checkpoint: str | None = None
    max_epochs: int | None = None
    seed: int = 0
    min_accuracy: float | None = None


@dataclass
class BenchmarkConfig:
    """A ROAR/KAR benchmark: base model, every method's ranks, and the retraining grid.

    Attributes:
        name: the benchmark's name: the W&B group and the report's title.
        imports: modules imported first (in every worker too), so that their
            ``@register_method`` / ``@register_model`` / ``@register_source`` decorators run:
            ``[mypkg.saliency]``. An installed package's entry points need no import.
        data: the datamodule: :class:`~roar.data.datamodule.ImageDataModule` arguments, or
            ``{class_path, init_args}`` of it or of any LightningDataModule (see
            :func:`~roar.data.datamodule.datamodule_arguments`).
        model: :class:`~roar.models.classifier.ImageClassifier` arguments (``arch``, ``lr``...).
        trainer: ``lightning.Trainer`` arguments of every training (``max_epochs``, ``accelerator``...).
        base: the base model.
        methods: attribution methods to benchmark; ``random`` is the baseline. Each is a registry
            key (``gradient``) or a definition with a ``name`` (see :func:`normalize_methods`):
            ``{name: deeplift, class_path: captum.attr.DeepLift}``,
            ``{name: mine, function: mypkg.saliency:explain, ensemble: sg}``.
        method_params: per-method parameters, e.g. ``{integrated_gradients: {n_steps: 32}}``.
        thresholds: fractions of features removed (ROAR) or kept (KAR), in (0, 1); the unmasked
            reference (0 removed / everything kept) is always run.
        seeds: number of retraining seeds (0..n-1), or the list of seeds.
        modes: ``roar`` and/or ``kar`` (retrained); ``noretrain`` / ``noretrain_kar`` alone run
            only the no-retrain evaluations in ROAR / KAR order (ROAD's MoRF / LeRF with
            ``protocol.fill: noisy_linear``), training nothing but the base model. An entry
            ``mode@fill`` runs that mode under that fill instead of ``protocol.fill``, so several
            fills share one grid: ``[roar, noretrain@noisy_linear, noretrain_kar@noisy_linear]``
            is ROAR beside ROAD (:func:`~roar.benchmark.plan.parse_modes`).
        noretrain: also evaluate the base model on masked test data without retraining
            (confounded by distribution shift; reported for comparison), under ``protocol.fill``:
            ROAR order, and KAR order too when ``kar`` is among the modes.
        protocol: the protocol choices, see :class:`Protocol`.
        attribution_batch_size: images per attribution call, or ``auto``: the largest power of two
            whose measured peak fits ``attribution_memory_budget`` (:mod:`roar.attribution.batch_budget`;
            at most 4096 on CUDA, 256 on a CPU; 256 for GradientSHAP without ``baselines``, whose maps
            depend on the batch). Memory only otherwise: ranks of any batch size are reused.
        attribution_memory_budget: ``auto``'s budget: a fraction in (0, 1] of the free memory, or a
            size such as ``8GiB``.
        attribution_device: ``auto``, ``cpu`` or ``cuda``.
        logger: ``wandb`` (offline by default, one run per retrain), ``csv`` or ``none``.
        wandb_project: W&B project.
        wandb_offline: log offline under the output folder; ``wandb sync`` uploads later.
        save_checkpoints: keep each retrain's final checkpoint.
        retries: how many times a crashed run is retried before it is recorded as failed.
        confidence_level: the level of every interval in the report (0.95: 95%); report only,
            in no fingerprint.
        bootstrap_resamples: resamples per bootstrap interval (seeded; report only).
        stack: retrains trained together as one batched model (:mod:`roar.benchmark.stacked_runner`):
            1 (one at a time), N, or ``auto`` (the number of seeds for small models). Results equal
            separate training within float tolerance; recorded in every row's config, not in fingerprints.
        leakage: after the grid, the mask-leakage probe (Rong, Leemann et al., ICML 2022): per
            method, threshold and order, the same classifier trained on the 0/1 masks alone;
            above chance, the mask's shape carries the class (``leakage.csv`` and a report
            section; see :mod:`roar.benchmark.leakage`).
        leakage_seed: the training seed of every leakage probe.
    """

    name: str = "benchmark"
    imports: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    base: BaseModel = field(default_factory=BaseModel)
    methods: list[str | dict[str, Any]] = field(default_factory=lambda: ["random"])
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    seeds: int | list[int] = 5
    modes: list[str] = field(default_factory=lambda: ["roar"])
    noretrain: bool = True
    protocol: Protocol = field(default_factory=Protocol)
    attribution_batch_size: int | Literal["auto"] = 256
    attribution_memory_budget: float | str = 0.5
    attribution_device: str = "auto"
    logger: Literal["wandb", "csv", "none"] = "wandb"
    wandb_project: str = "roar"
    wandb_offline: bool = True
    save_checkpoints: bool = True
    retries: int = 0
    confidence_level: float = 0.95
    bootstrap_resamples: int = 2000
    stack: int | Literal["auto"] = 1
    leakage: bool = False
    leakage_seed: int = 0

    def __post_init__(self) -> None:
        import_modules(self.imports)
        # The command line parser may hand nested class_path entries over as Namespaces: keep plain data.
        for name in ("data", "model", "trainer", "method_params"):
            setattr(self, name, _plain(getattr(self, name)))
        self.methods, self.method_params = normalize_methods(_plain(self.methods), self.method_params)
        if "class_path" in self.data:  # the train.py fit form, or a user's LightningDataModule
            from roar.data.datamodule import datamodule_arguments

            self.data = datamodule_arguments(self.data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkConfig:
        """Rebuild a config from :meth:`to_dict` (or the parsed ``benchmark:`` section plus data/model/trainer)."""
        data = dict(data)
        data["base"] = BaseModel(**dict(data.get("base") or {}))
        data["protocol"] = Protocol(**dict(data.get("protocol") or {}))
        return cls(**data)

    def _check_trainer_entries(self) -> None:
        """The trainer's own callbacks and loggers (``class_path`` entries) must import, before any training."""
        from roar.registry import import_object

        for key in ("callbacks", "logger"):
            entries = self.trainer.get(key)
            for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
                if isinstance(entry, dict):
                    if "class_path" not in entry:
                        raise ValueError(f"trainer.{key} entries need a class_path (and optional init_args), got {entry!r}")
                    import_object(entry["class_path"], f"trainer.{key} class_path")

    @property
    def mode_fills(self) -> list[tuple[str, str]]:
        """The ``(mode, fill)`` pairs of ``modes``, plain entries under ``protocol.fill``."""
        from roar.benchmark.plan import parse_modes

        return parse_modes(self.modes, self.protocol.fill)

    @property
    def mode_names(self) -> list[str]:
        """The modes of ``modes`` without their fills, each once, in order."""
        return list(dict.fromkeys(mode for mode, _ in self.mode_fills))

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def validate(self) -> BenchmarkConfig:
        """Fail before any training on settings that cannot run, naming the value and the choices."""
        from roar.attribution.registry import resolved_params
        from roar.benchmark.plan import _check_seeds, _check_thresholds, parse_modes
        from roar.data.sources import SOURCES
        from roar.models.factory import check_arch

        if not self.methods:
            raise ValueError("methods is empty; name at least one attribution method (e.g. [random, gradient])")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods has duplicates: {self.methods}")
        for method in self.methods:
            if not isinstance(method, str) or not method or "/" in method or method != method.strip():
                raise ValueError(f"method name {method!r} must be a non-empty string without '/' or surrounding spaces (it names folders and result rows)")
            if method == "unmasked":
                raise ValueError("'unmasked' is the reserved name of the reference run (always run); remove it from methods")
            resolved_params(method, self.method_params.get(method))  # an unknown method or parameter fails now, not after the base model
        for method in self.method_params:  # params of a method left out (e.g. --methods on the command line) are unused, not wrong
            resolved_params(method, self.method_params[method])
        for t in self.thresholds:
            if not isinstance(t, (int, float)) or not 0 < t < 1:
                raise ValueError(f"threshold {t!r} is outside (0, 1); 0 is the unmasked reference, always run")
        if len(set(self.thresholds)) != len(self.thresholds):
            raise ValueError(f"thresholds has duplicates: {self.thresholds}")
        self.protocol.validate()  # protocol.fill first: plain modes entries run under it
        parse_modes(self.modes, self.protocol.fill)  # unknown modes and fills (mode@fill) fail here, naming the choices
        _check_seeds(self.seeds)  # negative or repeated seeds fail here, before the base model and ranks
        _check_thresholds(self.thresholds)
        if self.base.min_accuracy is not None and not 0 <= self.base.min_accuracy < 1:
            raise ValueError(f"base.min_accuracy must be in [0, 1), got {self.base.min_accuracy!r}")
        self._check_trainer_entries()
        steps = self.trainer.get("max_steps")
        for name, epochs in (("base.max_epochs", self.base.max_epochs), ("trainer.max_epochs", self.trainer.get("max_epochs"))):
            # 0 trained nothing: the base model was refused only after its "training", and retrains of 0 epochs
            # made a whole report of untrained models. -1 is Lightning's "no limit", bounded by trainer.max_steps.
            unbounded = epochs == -1 and isinstance(steps, int) and steps > 0
            if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or (epochs < 1 and not unbounded)):
                raise ValueError(f"{name} must be a positive number of epochs (or -1 with trainer.max_steps), got {epochs!r}")
        source = self.data.get("source", "digits")
        if source not in SOURCES:
            raise ValueError(SOURCES.unknown(source))
        check_arch(self.model.get("arch", "small_cnn"), self.model.get("arch_args"))
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        from roar.statistics import check_level, check_resamples

        from roar.attribution.batch_budget import check_batch_size, check_budget

        check_batch_size(self.attribution_batch_size, "attribution_batch_size")
        check_budget(self.attribution_memory_budget, "attribution_memory_budget")
        from roar.attribution.compute import check_device

        check_device(self.attribution_device, "attribution_device")  # 'gpu' failed only at the ranks, after the base model
        check_level(self.confidence_level)
        check_resamples(self.bootstrap_resamples)
        from roar.benchmark.stack_settings import check_stack_setting, unstackable_reason

        if check_stack_setting(self.stack) not in (1, "auto") and unstackable_reason(self):
            raise ValueError(f"benchmark.stack={self.stack}: {unstackable_reason(self)}; use stack: 1 (or auto, which falls back to one by one)")
        if not isinstance(self.leakage, bool):
            raise ValueError(f"leakage must be true or false, got {self.leakage!r}")
        if isinstance(self.leakage_seed, bool) or not isinstance(self.leakage_seed, int) or self.leakage_seed < 0:
            raise ValueError(f"leakage_seed must be a non-negative integer, got {self.leakage_seed!r}")
        return self
