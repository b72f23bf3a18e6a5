"""The resolved settings of training one classifier: what a trained model's fingerprint is made of.

A checkpoint on disk is reused only when the fingerprint of what trained it equals the current
one (DESIGN.md, "Fingerprints"). Resolved means defaults filled in: a setting the config leaves
out is recorded at the value it took, so a model trained when a default was 10 epochs is not
reused under a default of 20; and speed- or output-only settings (``num_workers``,
``accelerator``, loggers, ``compile``...) are left out, so changing them keeps a model valid.
A user's datamodule or network adds the sha256 of its source file, and starting weights their
bytes' sha256.

Used for the benchmark's base model (:mod:`roar.benchmark.provenance`) and the sanity report's
true- and permuted-label models (:mod:`roar.sanity.trained_models`).
"""

from __future__ import annotations

import inspect
from typing import Any

from roar.fingerprint import jsonable, roar_version

IGNORED = {
    # Where and how fast, not what: changing them keeps every trained model valid.
    "trainer": {
        "accelerator", "logger", "callbacks", "enable_progress_bar", "enable_model_summary", "enable_checkpointing",
        "default_root_dir", "log_every_n_steps", "profiler", "num_sanity_val_steps", "barebones", "benchmark",
    },
    "data": {"num_workers", "download"},
    "model": {"compile", "channels_last"},
}  # fmt: skip


def signature_defaults(cls: type) -> dict[str, Any]:
    """``{parameter: default}`` of ``cls.__init__`` (parameters without one left out)."""
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def resolved_section(defaults: dict[str, Any], given: dict[str, Any], ignored: set[str]) -> dict[str, Any]:
    """``defaults`` updated by ``given``, less ``ignored``, sorted and JSON-able."""
    merged = {**defaults, **given}
    return jsonable({k: merged[k] for k in sorted(merged) if k not in ignored})


def training_settings(data: dict[str, Any], model: dict[str, Any], trainer: dict[str, Any], trainer_defaults: dict[str, Any]) -> dict[str, Any]:
    """``{"roar", "data", "model", "trainer"}``: the resolved settings a classifier is trained with.

    Args:
        data: :class:`~roar.data.datamodule.ImageDataModule` arguments as configured.
        model: :class:`~roar.models.classifier.ImageClassifier` arguments as configured.
        trainer: Lightning ``Trainer`` arguments as configured.
        trainer_defaults: what the caller's trainer uses where ``trainer`` says nothing.
    """
    from roar.data.datamodule import ImageDataModule
    from roar.models.classifier import ImageClassifier

    resolved_trainer = resolved_section(trainer_defaults, trainer, IGNORED["trainer"])
    resolved_model = resolved_section(signature_defaults(ImageClassifier), model, IGNORED["model"])
    for key in ("arch_args", "weights"):  # unset options leave fingerprints of earlier versions as they were
        if resolved_model.get(key) is None:
            resolved_model.pop(key, None)
    if resolved_model.get("weights"):  # the starting weights are their bytes, not their path
        from roar.attribution.store_format import checkpoint_sha256

        resolved_model["weights_sha256"] = checkpoint_sha256(resolved_model["weights"])
    resolved_data = resolved_section(signature_defaults(ImageDataModule), data, IGNORED["data"])
    for key in ("limit_train", "limit_test"):  # the whole data, as before limits existed: earlier fingerprints hold
        if resolved_data.get(key) is None:
            resolved_data.pop(key, None)
    from roar.data.lightning_source import datamodule_source_sha256
    from roar.models.factory import arch_source_sha256

    for section, sha256 in ((resolved_data, datamodule_source_sha256(resolved_data)), (resolved_model, arch_source_sha256(resolved_model.get("arch")))):
        if sha256:  # a user's datamodule or network: editing its code changes what is trained
            section["source_sha256"] = sha256
    return {"roar": roar_version(), "data": resolved_data, "model": resolved_model, "trainer": resolved_trainer}


__all__ = ["IGNORED", "resolved_section", "signature_defaults", "training_settings"]
