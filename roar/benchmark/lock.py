"""One benchmark per output folder at a time.

Two benchmarks on one ``--out`` would both train the base model, race on the rank store and on
each run's log folder, and record whichever run finished last. :class:`FolderLock` takes an
exclusive ``flock`` on ``<out>/.roar.lock`` for the whole command; the operating system releases it
when the process ends, however it ends, so a killed benchmark never leaves a stale lock behind.
The lock file names its holder, so a second command can say which process to wait for.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".roar.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder is then not protected
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(RuntimeError):
    """Another roar process holds the output folder."""


class FolderLock:
    """Exclusive lock on an output folder, held while the ``with`` block runs.

    Raises:
        FolderBusyError: at once (never waits) when another process holds it, naming that process.
    """

    def __init__(self, folder: str | os.PathLike, command: str = "benchmark") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                who = self.holder()
                since = who.get("started", "?")
                raise FolderBusyError(
                    f"{self.path.parent} is in use by another roar {who.get('command', 'process')} "
                    f"(pid {who.get('pid', '?')} on {who.get('host', '?')}, since {since}: {who.get('argv', '')}); "
                    "wait for it to finish, stop it, or use another --out"
                ) from None
        record = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": " ".join(sys.argv),
        }  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
