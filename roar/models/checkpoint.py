"""Loading checkpoints without running code from them.

``torch.load(..., weights_only=False)`` unpickles arbitrary objects, so a crafted checkpoint runs
code the moment it is read. Every checkpoint roar reads (a base model, ``--ckpt``, a sanity
check's reference) goes through :func:`load_checkpoint`, which uses PyTorch's restricted
unpickler (``weights_only=True``): tensors, containers and primitive types only. roar's own
checkpoints need nothing more (their hyperparameters are plain values).

A foreign checkpoint that pickles other objects (a custom class in its hyperparameters, say) is
refused with the name of the object. If you trust its source, allow exactly those objects:

* in Python: ``torch.serialization.add_safe_globals([MyClass])`` before roar loads it;
* from the command line or a config: ``ROAR_TRUSTED_GLOBALS=mypkg.module.MyClass,...``.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

TRUSTED_GLOBALS_ENV = "ROAR_TRUSTED_GLOBALS"
PROVENANCE_KEY = "roar_provenance"
"""Where roar records, inside a checkpoint it wrote, the fingerprint of what produced it."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe to load, or does not fit the data or model it is used with."""


def _trusted_globals() -> list[Any]:
    names = [n.strip() for n in os.environ.get(TRUSTED_GLOBALS_ENV, "").split(",") if n.strip()]
    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError) as err:
            raise CheckpointError(f"{TRUSTED_GLOBALS_ENV} names {name!r}, which does not import ({err})") from None
    return found


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the restricted unpickler (no code runs).

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or holds objects outside the
            allow-list (the message names them and how to trust them explicitly).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (b"PK") or, in the legacy format, a pickle (protocol opcode
    # 0x80): anything else (a text file, a config) is refused here, not misread by the unpickler
    # as forbidden objects or as a KeyError from its memo.
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); pass the .ckpt file written by training")
    trusted = _trusted_globals()
    try:
        with torch.serialization.safe_globals(trusted):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0] if detail else "")
        raise CheckpointError(
            f"refusing to load {path}: it holds objects that could run code when unpickled ({reason.strip()}). "
            f"If you trust this file, allow exactly those objects with {TRUSTED_GLOBALS_ENV}=module.Name[,...] "
            "or torch.serialization.add_safe_globals([...]); or re-save its state_dict and hyper_parameters as plain values."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:  # a corrupt pickle
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def non_finite_parameters(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf (a diverged training)."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def load_state_strict(model: nn.Module, state_dict: dict[str, Any], path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with an error that says which tensors do not fit, and how."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(own[name].shape)}"
        for name in own
        if name in state_dict and hasattr(state_dict[name], "shape") and tuple(state_dict[name].shape) != tuple(own[name].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} tensors of another shape (checkpoint vs model), e.g. {'; '.join(mismatched[:3])}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"the weights in {path} do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)


def classifier_head(net: nn.Module) -> str | None:
    """The dotted name of a network's classification head: timm's ``get_classifier()``, else its last ``nn.Linear``."""
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    names = {id(m): n for n, m in net.named_modules()}
    if isinstance(head, nn.Module) and id(head) in names and names[id(head)]:
        return names[id(head)]
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def load_weights(net: nn.Module, path: str | os.PathLike) -> list[str]:
    """Start a network from a local weights file (``model.weights``), safely, as fine-tuning does.

    The file is a ``state_dict`` (or a checkpoint with one; a roar classifier's ``net.`` prefix is
    taken off). Every tensor must fit, except the classification head's: pretrained ImageNet
    weights have 1000 outputs, so a head of another shape (or none) is left freshly initialised.

    Returns:
        The head's tensors that were left initialised.

    Raises:
        CheckpointError: the file is unsafe or unreadable, or its tensors do not fit (named).
    """
    state = load_checkpoint(path)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
        if any(k.startswith("net.") for k in state):
            state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    own = net.state_dict()
    head = classifier_head(net)
    in_head = (lambda k: head is not None and (k == head or k.startswith(head + "."))) if head else (lambda k: False)
    skipped = sorted(k for k in own if in_head(k) and (k not in state or tuple(state[k].shape) != tuple(own[k].shape)))
    kept = {k: v for k, v in state.items() if k not in skipped}
    load_state_strict(net, {**kept, **{k: own[k] for k in skipped}}, path)
    return skipped


def load_classifier(
    checkpoint: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
    arch: str | None = None,
) -> nn.Module:
    """Load an :class:`~roar.models.classifier.ImageClassifier` checkpoint, safely, in eval mode.

    The expectations that are given are checked against the checkpoint's hyperparameters before any
    weight is read, so a checkpoint of another architecture, class count, channel count or image
    size is refused with a message naming both values; weights with NaN/inf are refused too.

    Raises:
        CheckpointError: see above, and :func:`load_checkpoint`.
    """
    from roar.models.classifier import ImageClassifier

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if "state_dict" not in ckpt or "arch" not in hparams:
        raise CheckpointError(
            f"{path} is not an ImageClassifier checkpoint (it has no state_dict or no hyper_parameters.arch); "
            "train one with `python train.py fit` or `python -m roar benchmark`"
        )
    expected = {"arch": arch, "num_classes": num_classes, "in_chans": in_chans, "image_size": image_size}
    mismatches = [f"{k}={hparams.get(k)!r} (expected {v!r})" for k, v in expected.items() if v is not None and hparams.get(k) != v]
    if mismatches:
        raise CheckpointError(f"checkpoint {path} does not fit this data/model: {', '.join(mismatches)}")
    bad = non_finite_parameters(ckpt["state_dict"])
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-finite weights ({', '.join(bad[:3])}): its training diverged")
    hparams.pop("_instantiator", None)
    hparams["weights"] = None  # the checkpoint's own weights are loaded below; the start file may be gone
    try:
        model = ImageClassifier(**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has hyperparameters this ImageClassifier does not take: {err}") from None
    load_state_strict(model, ckpt["state_dict"], path)
    return model.eval()


def provenance(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint roar recorded in a checkpoint it wrote, or None."""
    value = load_checkpoint(checkpoint).get(PROVENANCE_KEY)
    return value if isinstance(value, dict) else None


__all__ = ["CheckpointError", "classifier_head", "load_weights", "PROVENANCE_KEY", "TRUSTED_GLOBALS_ENV", "load_checkpoint", "load_classifier", "load_state_strict", "non_finite_parameters", "provenance"]
