"""The sanity report's two models: trained (or reused) on the true and on randomly permuted labels.

Adebayo et al.'s (NeurIPS 2018) data randomisation compares a model trained on the true labels
with one of the same architecture trained to memorise permuted labels. A checkpoint is reused only
if it was trained with the same settings, resolved (:mod:`roar.training_settings`), recorded beside it in a
``.json`` file with the checkpoint's sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from roar.attribution.store_format import checkpoint_sha256
from roar.epoch_progress import EpochProgress
from roar.fingerprint import differences
from roar.sanity.maps import build_methods, explained_network
from roar.sanity.report_config import SanityReportConfig
from roar.training_settings import training_settings

MODEL_CHECKPOINT = "model.ckpt"
PERMUTED_CHECKPOINT = "permuted.ckpt"
# Attributes of the trained models that identify them: a checkpoint is reused only if these match.
IGNORED_TRAINER_KEYS = ("max_epochs", "logger", "callbacks", "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "default_root_dir")
"""Trainer settings the report sets itself (epochs per model, its own CSV logs, no checkpoints midway)."""
LINKED = ("num_classes", "in_chans", "image_size", "channel_mean", "channel_std")
TRAINER_DEFAULTS = {"devices": 1}
"""The trainer settings of both models where the config says nothing (the accelerator follows ``sanity.device``)."""
CHECKPOINT_SHA256 = "checkpoint_sha256"


def _datamodule(cfg: SanityReportConfig, permuted: bool):
    from roar.data.datamodule import ImageDataModule

    data = dict(cfg.data)
    if permuted:
        data["augment"] = cfg.permuted_augment
    return ImageDataModule(**data, label_permutation=permuted)


def _training_record(cfg: SanityReportConfig, permuted: bool) -> dict[str, Any]:
    """What identifies a trained model, its settings resolved (defaults filled in, roar's version, a
    user datamodule's source): compared with the ``.json`` beside a checkpoint before reuse."""
    data = {**cfg.data, **({"augment": cfg.permuted_augment} if permuted else {})}
    trainer = {k: v for k, v in cfg.trainer.items() if k not in IGNORED_TRAINER_KEYS}
    return {
        **training_settings(data, cfg.model, trainer, TRAINER_DEFAULTS),  # JSON-able already
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
        "accelerator": "gpu" if device.type == "cuda" else "cpu", **TRAINER_DEFAULTS, "log_every_n_steps": 10, **settings,
        "max_epochs": cfg.permuted_epochs if permuted else cfg.epochs,
        "logger": CSVLogger(out / "logs", name="permuted_labels" if permuted else "true_labels"),
        "enable_checkpointing": False, "enable_progress_bar": cfg.progress and cfg.verbose, "enable_model_summary": False,
        # without Lightning's bars (--verbose), one bar over the epochs in a terminal
        "callbacks": [EpochProgress("permuted-label model" if permuted else "true-label model")] if cfg.progress and not cfg.verbose else None,
    })  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(checkpoint)
    # the checkpoint's bytes too: a model.ckpt replaced or damaged beside an unchanged record is not reused
    record = {**_training_record(cfg, permuted), CHECKPOINT_SHA256: checkpoint_sha256(checkpoint)}
    checkpoint.with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return model


def _check_methods_fit_the_model(cfg: SanityReportConfig, datamodule) -> None:
    """Build every method on an untrained model of the configured architecture and run it on a
    probe batch, before training, so that model-specific parameters (a Grad-CAM ``layer``) and a
    user's method that raises, returns another shape or NaN fail early too."""
    from roar.attribution.compute import probe_methods
    from roar.models.classifier import ImageClassifier

    with torch.random.fork_rng(devices=[]):
        blank = ImageClassifier(**{**cfg.model, **{name: getattr(datamodule, name) for name in LINKED}})
        network = explained_network(blank)
        build_methods(network, cfg.methods, cfg.method_params, cfg.seed)
        probe_methods(datamodule, cfg.methods, cfg.method_params, network)


def check_compatible(model, datamodule, path: Path) -> None:
    """Refuse a checkpoint whose classes, channels or input size differ from the data's."""
    for name in ("num_classes", "in_chans", "image_size"):
        have, want = model.hparams.get(name), getattr(datamodule, name)
        if have != want:
            raise ValueError(f"checkpoint {str(path)!r} has {name}={have}, but the data has {name}={want}")


def _changed_since_training(cfg: SanityReportConfig, permuted: bool, path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be reused for ``cfg`` (its settings, or its bytes,
    changed), or None when it can."""
    record = path.with_suffix(".json")
    if not (path.is_file() and record.is_file()):
        return "none yet"
    try:
        recorded = json.loads(record.read_text())
    except ValueError:
        return f"{record.name} is unreadable"
    stored = recorded.pop(CHECKPOINT_SHA256, None)
    changes = differences(recorded, _training_record(cfg, permuted), limit=3)
    if changes:
        return "settings changed: " + "; ".join(changes)
    if stored != checkpoint_sha256(path):
        return f"{path.name} changed since it was trained"
    return None


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
        changed = _changed_since_training(cfg, permuted, path)
        if changed is None and not cfg.retrain:
            say(f"reusing the {kind} model in {path} (same settings; --sanity.retrain true to train again)")
        else:
            why = "--sanity.retrain true" if cfg.retrain else changed
            epochs = cfg.permuted_epochs if permuted else cfg.epochs
            say(f"training the {kind} model for {epochs} epoch{'s' if epochs != 1 else ''} ({why}) -> {path}")
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
