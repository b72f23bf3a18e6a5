"""Shared helpers of the file-backed sources: the root folder, unknown options, torchvision downloads, uint8 pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DOWNLOAD_HINT = "point `root` at the folder that holds it (--data.root PATH), or set `download: true` in the data config (--data.download true) to fetch it"


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"dataset source {name!r} reads files, so it needs a root folder: set `root` (--data.root PATH)")
    return Path(root).expanduser()


def _reject_options(name: str, options: dict[str, Any], valid: Sequence[str] = ()) -> None:
    # A misspelt option silently ignored would load the wrong data without a word; refuse it.
    if options:
        choices = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option(s) {sorted(options)} for dataset source {name!r}; valid options: {choices}")


def _download_with_torchvision(name: str, dataset_class: str, root: Path, expected: str) -> None:
    """Fetch a dataset's files into ``root`` with torchvision's downloader (it verifies the md5s).

    A failure (no internet, a proxy, a dead mirror) is a ``FileNotFoundError`` in one line: the files
    are still missing, and the message says where they go (``expected``) so they can be copied by hand.
    """
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(torchvision.datasets, dataset_class)(root=str(root), train=True, download=True)
    except Exception as err:  # network failures surface as URLError, HTTPError, RuntimeError, ...
        # torchvision's MNIST error lists each mirror on its own lines: one line keeps it an error message.
        reason = " ".join(str(err).split()) or type(err).__name__
        raise FileNotFoundError(
            f"could not download {name} into {root} ({reason}); with no internet, put the files there yourself: {expected}"
        ) from err


def _uint8_to_unit(array: np.ndarray) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    # astype copies into a fresh writable array (IDX arrays are read-only views of the file bytes).
    return torch.from_numpy(array.astype(np.float32)).div_(255.0)
