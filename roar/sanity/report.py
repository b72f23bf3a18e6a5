"""``python -m roar sanity``: the sanity checks of Adebayo et al. (NeurIPS 2018) as a report.

::

    python -m roar sanity --config configs/sanity/digits.yaml --out runs/sanity

1. Trains (or reuses) a model on the true labels and one on randomly permuted labels, with a
   Lightning Trainer (CSV logs under ``<out>/logs``, checkpoints ``<out>/model.ckpt`` and
   ``<out>/permuted.ckpt``; a checkpoint is reused only if it was trained with the same
   settings, recorded beside it in a ``.json`` file).
2. Explains a fixed, seeded batch of images with every method, then runs the model-randomisation
   checks (``cascading`` and ``independent`` from Adebayo et al. 2018, ``bottom_up`` from Binder
   et al., arXiv 2211.12486, 2022) and the data-randomisation check.
3. Writes ``sanity.csv`` (method, check, step, layer, metric, mean, std, n, and the percentile
   bootstrap interval over images ``ci_low``, ``ci_high``: :mod:`roar.sanity.intervals`), one plot per check
   and metric (``curve_<check>_<metric>.png``: similarity against the randomised layer, one line
   per method, the ``noise`` control dashed), and per method the cascading-randomisation grid
   (``grid_cascading_<method>.png``: rows are images; columns the input, the original map, then
   the map after each randomised layer), like Figure 2 of the paper.
4. Prints a table per method of the similarity after full randomisation, beside the ``noise``
   control, and why a low similarity is necessary but not sufficient.

Protocol (see :mod:`roar.sanity.maps`): the explained class is the true-label model's predicted
class, fixed across all steps and used for the permuted-label model too; maps are compared as
the paper does by :mod:`roar.sanity.similarity`.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from roar.sanity.maps import (
    CHECKS,
    CONTROL,
    DATA_CHECK,
    DEFAULT_METRICS,
    CheckResult,
    build_methods,
    check_methods,
    check_metrics,
    check_orders,
    check_stack,
    check_target,
    data_randomization,
    explained_network,
    fixed_target,
    map_grid_figure,
    model_randomization,
    select_batch,
)
from roar.statistics import check_level
from roar.sanity.intervals import interval_rows
from roar.sanity.randomization import ORDERS
from roar.sanity.revisited import EMPRT, Smoothing, efficient_mprt, print_emprt_table
from roar.sanity.settings import SETTING_COLUMNS, SanitySettings

CSV_COLUMNS = ("method", "check", "step", "layer", "metric", "mean", "std", "n", "ci_low", "ci_high", *SETTING_COLUMNS)
MODEL_CHECKPOINT = "model.ckpt"
PERMUTED_CHECKPOINT = "permuted.ckpt"
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
# Attributes of the trained models that identify them: a checkpoint is reused only if these match.
IGNORED_TRAINER_KEYS = ("max_epochs", "logger", "callbacks", "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "default_root_dir")
"""Trainer settings the report sets itself (epochs per model, its own CSV logs, no checkpoints midway)."""
LINKED = ("num_classes", "in_chans", "image_size", "channel_mean", "channel_std")

NOT_SUFFICIENT = (
    "How to read this: a method whose maps stay similar to the original after the weights (or the labels) "
    "are randomised fails the sanity check, because its maps do not depend on what the model learned. "
    "A low similarity is necessary but not sufficient: the `noise` control, i.i.d. Gaussian maps that never "
    "look at the model, scores near zero too and so also \"passes\" (Binder et al. 2022, arXiv 2211.12486). "
    "Read every method against the control, and against bottom-up randomisation, which top-down "
    "(cascading) randomisation does not replace."
)


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
        if self.control and CONTROL not in self.methods:
            self.methods = [*self.methods, CONTROL]
        self.methods = check_methods(self.methods, self.method_params)
        self.metrics = check_metrics(self.metrics)
        self.orders = check_orders(self.orders)
        check_target(self.target)
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid devices: {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available; valid devices here: auto, cpu")
        # An unknown batchnorm, normalization or reduction, or a bad sMPRT setting, fails here, naming the choices.
        _ = self.settings, self.smoothing
        check_orders(self.smprt_order)
        check_stack(self.stack)
        for name in ("epochs", "permuted_epochs", "num_images", "emprt_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("checkpoint", "permuted_checkpoint"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name} not found: {path!r}")
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


# --------------------------------------------------------------------------------------------
# Training (or reusing) the two models
# --------------------------------------------------------------------------------------------


def _datamodule(cfg: SanityReportConfig, permuted: bool):
    from roar.data.datamodule import ImageDataModule

    data = dict(cfg.data)
    if permuted:
        data["augment"] = cfg.permuted_augment
    return ImageDataModule(**data, label_permutation=permuted)


def _training_record(cfg: SanityReportConfig, permuted: bool) -> dict[str, Any]:
    """What identifies a trained model: compared with the ``.json`` beside a checkpoint before reuse."""
    return {
        "data": {**cfg.data, **({"augment": cfg.permuted_augment} if permuted else {})},
        "model": cfg.model,
        "trainer": {k: v for k, v in sorted(cfg.trainer.items()) if k not in IGNORED_TRAINER_KEYS},
        "label_permutation": permuted,
        "epochs": cfg.permuted_epochs if permuted else cfg.epochs,
        "seed": cfg.seed,
    }


def train_model(cfg: SanityReportConfig, out: Path, permuted: bool, checkpoint: Path):
    """Train the true-label (or permuted-label) model with a Lightning Trainer; save ``checkpoint``."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from roar.models.classifier import ImageClassifier

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _datamodule(cfg, permuted)
    linked = {name: getattr(datamodule, name) for name in LINKED}
    model = ImageClassifier(**{**cfg.model, **linked})
    device = cfg.torch_device
    settings = {k: v for k, v in cfg.trainer.items() if k not in IGNORED_TRAINER_KEYS}
    trainer = L.Trainer(**{
        "accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1, "log_every_n_steps": 10, **settings,
        "max_epochs": cfg.permuted_epochs if permuted else cfg.epochs,
        "logger": CSVLogger(out / "logs", name="permuted_labels" if permuted else "true_labels"),
        "enable_checkpointing": False, "enable_progress_bar": cfg.progress and cfg.verbose, "enable_model_summary": False,
    })  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(checkpoint)
    checkpoint.with_suffix(".json").write_text(json.dumps(_training_record(cfg, permuted), indent=2, sort_keys=True))
    return model


def _check_methods_fit_the_model(cfg: SanityReportConfig, datamodule) -> None:
    """Build every method on an untrained model of the configured architecture, before training,
    so that model-specific parameters (a Grad-CAM ``layer``) fail early too."""
    from roar.models.classifier import ImageClassifier

    with torch.random.fork_rng(devices=[]):
        blank = ImageClassifier(**{**cfg.model, **{name: getattr(datamodule, name) for name in LINKED}})
    build_methods(explained_network(blank), cfg.methods, cfg.method_params, cfg.seed)


def check_compatible(model, datamodule, path: Path) -> None:
    """Refuse a checkpoint whose classes, channels or input size differ from the data's."""
    for name in ("num_classes", "in_chans", "image_size"):
        have, want = model.hparams.get(name), getattr(datamodule, name)
        if have != want:
            raise ValueError(f"checkpoint {str(path)!r} has {name}={have}, but the data has {name}={want}")


def obtain_model(cfg: SanityReportConfig, out: Path, permuted: bool, say, datamodule=None) -> tuple[Any, Path]:
    """The given checkpoint, else ``<out>``'s if it was trained with these settings, else a new one.

    A given checkpoint is checked against ``datamodule`` (classes, channels, input size).
    """
    from roar.models.checkpoint import load_classifier

    given = cfg.permuted_checkpoint if permuted else cfg.checkpoint
    kind = "permuted-label" if permuted else "true-label"
    if given is not None:
        path = Path(given)
        say(f"using the {kind} checkpoint {path}")
    else:
        path = out / (PERMUTED_CHECKPOINT if permuted else MODEL_CHECKPOINT)
        record = path.with_suffix(".json")
        wanted = json.loads(json.dumps(_training_record(cfg, permuted), sort_keys=True))
        reusable = path.is_file() and record.is_file() and json.loads(record.read_text()) == wanted
        if reusable and not cfg.retrain:
            say(f"reusing the {kind} model in {path} (same settings; --retrain true to train again)")
        else:
            why = "--retrain" if cfg.retrain else ("settings changed" if path.is_file() else "none yet")
            epochs = cfg.permuted_epochs if permuted else cfg.epochs
            say(f"training the {kind} model for {epochs} epochs ({why}) -> {path}")
            train_model(cfg, out, permuted, path)
    # The restricted unpickler: a checkpoint from elsewhere cannot run code (roar.models.checkpoint).
    model = load_classifier(path).to(cfg.torch_device).eval()
    if given is not None and datamodule is not None:
        check_compatible(model, datamodule, path)
    return model, path


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no augmentation) on a ``(image, label, ...)`` dataset."""
    from torch.utils.data import DataLoader

    from roar.data.datamodule import collate_batch

    model.eval()
    correct = total = 0
    for images, labels, _ in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_batch):
        correct += (model(images.to(device)).argmax(dim=1).cpu() == labels).sum().item()
        total += len(labels)
    return correct / max(total, 1)


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})


def read_csv(path: Path) -> list[dict[str, Any]]:
    """``sanity.csv`` back as typed rows."""
    with path.open(newline="") as handle:
        return [
            {
                **row, "step": int(row["step"]), "mean": float(row["mean"]), "std": float(row["std"]), "n": int(row["n"]),
                "ci_low": float(row.get("ci_low") or "nan"), "ci_high": float(row.get("ci_high") or "nan"),
            }  # fmt: skip
            for row in csv.DictReader(handle)
        ]


def plot_curve(rows: Sequence[dict[str, Any]], check: str, metric: str, path: Path) -> None:
    """Similarity against the randomised layer, one line per method (mean, bootstrap CI band over images), ``noise`` dashed.

    The data check has a single "step" (the permuted-label model): it is drawn as bars.
    """
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r["check"] == check and r["metric"] == metric]
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    fig = Figure(figsize=(7.2, 4.0), layout="constrained")
    ax = fig.subplots()
    if check == DATA_CHECK:
        means = [next(r["mean"] for r in chosen if r["method"] == m) for m in methods]
        found = [next(r for r in chosen if r["method"] == m) for m in methods]
        # asymmetric error bars: the interval need not be centred on the mean; NaN (one image) draws none
        yerr = [[r["mean"] - r["ci_low"] for r in found], [r["ci_high"] - r["mean"] for r in found]]
        bars = ax.bar(range(len(methods)), means, yerr=yerr, capsize=3, color="tab:blue")
        for bar, method in zip(bars, methods):
            if method == CONTROL:
                bar.set_facecolor("lightgray")
                bar.set_edgecolor("gray")
                bar.set_hatch("//")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_xlabel("method")
        ax.set_title(f"data randomisation: permuted-label vs true-label model ({metric})")
    else:
        layers: list[str] = []
        for method in methods:
            own = sorted((r for r in chosen if r["method"] == method), key=lambda r: r["step"])
            layers = layers or [r["layer"] for r in own]
            steps = [r["step"] for r in own]
            mean = [r["mean"] for r in own]
            low = [r["ci_low"] for r in own]
            high = [r["ci_high"] for r in own]
            style = {"linestyle": "--", "color": "gray"} if method == CONTROL else {}
            (line,) = ax.plot(steps, mean, marker="o", label=method, **style)
            ax.fill_between(steps, low, high, alpha=0.08, color=line.get_color())
        ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
        ax.set_xlabel("randomised layer" + (" (cumulative)" if check != "independent" else " (alone)"))
        ax.set_title(f"{check} randomisation ({metric})")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.axhline(0.0, color="black", linewidth=0.5)
    reference = "the true-label model's map" if check == DATA_CHECK else "the original map"
    ax.set_ylabel(f"{metric} to {reference}", fontsize=9)
    fig.savefig(path, dpi=110)


def print_tables(console, rows: Sequence[dict[str, Any]], cfg: SanityReportConfig) -> None:
    """A rich table per method: similarity after the last step of each check, beside the control."""
    from rich.table import Table

    checks = [c for c in CHECKS if any(r["check"] == c for r in rows)]
    last = {c: max(r["step"] for r in rows if r["check"] == c) for c in checks}
    final = {(r["method"], r["check"], r["metric"]): r for r in rows if r["step"] == last[r["check"]]}
    layer = {c: next(r["layer"] for r in rows if r["check"] == c and r["step"] == last[c]) for c in checks}
    what = {
        "cascading": "every layer randomised, top down",
        "bottom_up": "every layer randomised, bottom up",
        "independent": f"only {layer.get('independent')} randomised",
        "smprt": f"every layer randomised ({cfg.smprt_order}), noise-averaged maps",
        DATA_CHECK: "model trained on permuted labels",
    }
    caption = "; ".join(f"{c}: {what[c]}" for c in checks)
    control = CONTROL in cfg.methods
    for method in cfg.methods:
        if method == CONTROL and len(cfg.methods) > 1:
            continue
        table = Table(title=f"{method}: similarity to the original map after the last step", caption=caption)
        table.add_column("check")
        table.add_column("metric")
        table.add_column(method, justify="right")
        if control and method != CONTROL:
            table.add_column(f"{CONTROL} (control)", justify="right", style="dim")
        for check in checks:
            for metric in cfg.metrics:
                cells = [check, metric]
                for name in [method] + ([CONTROL] if control and method != CONTROL else []):
                    row = final.get((name, check, metric))
                    cells.append("-" if row is None else f"{row['mean']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]")
                table.add_row(*cells, end_section=metric == cfg.metrics[-1])
        console.print(table)
    images = max((r["n"] for r in rows), default=0)
    console.print(f"(mean [{cfg.confidence_level:.0%} bootstrap interval] over {images} images; step-by-step values in sanity.csv and the curve plots)")
    console.print(NOT_SUFFICIENT)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def preflight(cfg: SanityReportConfig):
    """Every check that needs no training: the settings, the data, the methods on the architecture.

    Returns:
        The true-label datamodule.

    Raises:
        ValueError, FileNotFoundError: bad settings, naming the value and the valid choices.
    """
    from roar.models.checkpoint import load_classifier

    cfg.validate()
    datamodule = _datamodule(cfg, permuted=False)
    available = len(datamodule.split_dataset(cfg.split))
    if cfg.num_images > available:
        raise ValueError(f"num_images={cfg.num_images} but the {cfg.split} split has {available} images; use at most {available}")
    for given in (cfg.checkpoint, cfg.permuted_checkpoint):
        if given is not None:  # unsafe or ill-fitting checkpoints fail now, before any training
            load_classifier(given, num_classes=datamodule.num_classes, in_chans=datamodule.in_chans, image_size=datamodule.image_size)
    _check_methods_fit_the_model(cfg, datamodule)
    return datamodule


def run_report(cfg: SanityReportConfig, out: Path, console=None, datamodule=None) -> list[dict[str, Any]]:
    """Train or reuse the models, run the checks, write the report into ``out``.

    Args:
        cfg: the settings.
        out: the output folder.
        console: a rich console to print to (default: a new one on stdout).
        datamodule: the result of :func:`preflight` when it was called already.

    Returns:
        The ``sanity.csv`` rows.

    Raises:
        ValueError, FileNotFoundError: bad settings (raised before anything is trained or
            written), or a given checkpoint that does not fit the data.
    """
    from rich.console import Console

    datamodule = datamodule if datamodule is not None else preflight(cfg)
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = console.print
    device = cfg.torch_device

    model, model_path = obtain_model(cfg, out, permuted=False, say=say, datamodule=datamodule)
    permuted_model = None
    if cfg.data_check:
        permuted_model, permuted_path = obtain_model(cfg, out, permuted=True, say=say, datamodule=datamodule)

    images, labels, indices = select_batch(datamodule.split_dataset(cfg.split), cfg.num_images, cfg.seed, device)
    model.to(device)
    summary: dict[str, Any] = {
        "model": {"checkpoint": str(model_path), "test_acc": accuracy(model, datamodule.split_dataset("test"), device)}
    }
    if permuted_model is not None:
        permuted_data = _datamodule(cfg, permuted=True)
        summary["permuted_model"] = {
            "checkpoint": str(permuted_path),
            "epochs": cfg.permuted_epochs,
            "train_acc_permuted_labels": accuracy(permuted_model, permuted_data.split_dataset("train"), device),
            "test_acc": accuracy(permuted_model, permuted_data.split_dataset("test"), device),
            "chance": 1.0 / permuted_data.num_classes,
        }
    summary["images"] = {"split": cfg.split, "indices": indices.tolist(), "target": cfg.target}
    for name, info in summary.items():
        if "test_acc" in info:
            extra = f", train accuracy on the permuted labels {info['train_acc_permuted_labels']:.3f}" if "train_acc_permuted_labels" in info else ""
            say(f"{name}: test accuracy {info['test_acc']:.3f}{extra}")

    target = fixed_target(model, images, labels, cfg.target)
    results: list[CheckResult] = []
    for order in cfg.orders:
        say(f"{order} randomisation: {len(cfg.methods)} methods x {len(images)} images")
        results.append(
            model_randomization(
                model, images, order, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, keep_maps=order == "cascading",
                settings=cfg.settings, stack=cfg.stack,
            )
        )  # fmt: skip
    if cfg.smprt:
        say(f"sMPRT ({cfg.smprt_order}, {cfg.smprt_samples} noisy copies): {len(cfg.methods)} methods x {len(images)} images")
        results.append(
            model_randomization(
                model, images, cfg.smprt_order, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings, stack=cfg.stack, smoothing=cfg.smoothing,
            )
        )  # fmt: skip
    if cfg.emprt:
        say(f"eMPRT: {len(cfg.methods)} methods x {len(images)} images")
        results.append(
            efficient_mprt(
                model, images, cfg.methods, n_bins=cfg.emprt_bins, absolute=cfg.emprt_abs, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings,
            )
        )  # fmt: skip
    if permuted_model is not None:
        say("data randomisation: true-label vs permuted-label model")
        permuted_model.to(device)
        results.append(
            data_randomization(
                model, permuted_model, images, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings,
            )
        )  # fmt: skip

    rows = interval_rows((r for result in results for r in result.records), cfg.confidence_level)
    write_csv(rows, out / "sanity.csv")
    for result in results:
        for metric in cfg.metrics if result.check != EMPRT else []:
            plot_curve(rows, result.check, metric, out / f"curve_{result.check}_{metric}.png")
        if result.check == "cascading" and result.maps is not None:
            for method, maps in result.maps.items():
                fig = map_grid_figure(images, maps, result.layers, title=f"cascading randomisation: {method}")
                fig.savefig(out / f"grid_cascading_{method}.png", dpi=110)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_tables(console, [r for r in rows if r["check"] != EMPRT], cfg)
    print_emprt_table(console, rows)
    say(f"wrote {out / 'sanity.csv'}, the curves and the grids in {out}")
    return rows


def build_parser():
    """The command line: a ``train.py fit`` config's ``data``/``model``/``trainer`` sections plus a
    ``sanity:`` section, so ``--config configs/digits.yaml --config configs/sanity/digits.yaml`` compose."""
    from roar.fit_config import FIT_SECTIONS, ConfigParser, add_fit_sections

    parser = ConfigParser(
        prog="python -m roar sanity",
        description="Model- and data-randomisation sanity checks for saliency maps (Adebayo et al., NeurIPS 2018), "
        "with the noise control and bottom-up order of Binder et al. (arXiv 2211.12486, 2022).",
        exit_on_error=True,
        allow_abbrev=False,
    )
    add_fit_sections(parser)
    parser.add_class_arguments(SanityReportConfig, "sanity", skip=set(FIT_SECTIONS))
    parser.add_argument("--out", type=str, default="runs/sanity", help="output folder")
    return parser


def parse_config(argv: Sequence[str]) -> tuple[SanityReportConfig, Path]:
    from roar.attribution.registry import normalize_methods
    from roar.data.datamodule import datamodule_arguments
    from roar.fit_config import fit_sections, plain

    parser = build_parser()
    args = parser.parse_args(list(argv))
    sections = fit_sections(parser, args)
    values = plain(args.sanity)
    try:
        data = sections["data"]
        values["data"] = datamodule_arguments(data) if "class_path" in data else data
        values["model"] = {k: v for k, v in sections["model"].items() if k != "class_path"}
        values["trainer"] = sections["trainer"]
        values["methods"], values["method_params"] = normalize_methods(values["methods"], values.get("method_params"))
    except ValueError as err:
        parser.error(str(err))
    return SanityReportConfig(**values), Path(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m roar sanity``; returns the exit status (2 for bad settings)."""
    from rich.console import Console

    cfg, out = parse_config(sys.argv[1:] if argv is None else argv)
    try:
        datamodule = preflight(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from roar.quiet import quiet_third_party

    with quiet_third_party(cfg.verbose):
        run_report(cfg, out, Console(), datamodule)
    return 0


__all__ = ["SanityReportConfig", "build_parser", "main", "parse_config", "plot_curve", "preflight", "read_csv", "run_report"]
