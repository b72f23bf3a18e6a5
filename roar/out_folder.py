"""The output folder a command writes into (``--out``, ``--report_dir``), checked before any work.

Without this check, ``--out`` naming an existing file, a path under a file, or a folder the user
cannot write to surfaced as a ``FileExistsError``/``PermissionError`` traceback from ``mkdir``,
after the data was loaded (or, for a benchmark, after the config was parsed and the lock sought).
"""

from __future__ import annotations

import os
from pathlib import Path


def out_folder_problem(out: str | os.PathLike, option: str = "--out") -> str | None:
    """Why ``out`` cannot be (or become) a writable folder, or None when it can."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"{option} {out} is an existing file, not a folder; pass a folder (it is created if missing)"
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{option} {out} is under {existing}, which is a file, not a folder"
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {out}: {existing} is not writable; pass a folder you can write to"
    return None


__all__ = ["out_folder_problem"]
