"""ResultsStore: the benchmark's results database, one SQLite row per finished run.

Why SQLite: a benchmark is hours of retrains that may be interrupted at any point, possibly with
several worker processes (one per device) finishing runs at the same time. Each finished run is
one transaction, so a killed process never leaves half a row, and resuming is "skip the run ids
already done". WAL journal mode lets readers (a report written mid-benchmark) run beside writers,
and the busy timeout makes concurrent writers wait their turn instead of failing.

The store keeps only its path and opens a short-lived connection per call, so it can be pickled
into worker processes (a SQLite connection must never cross a fork).
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from roar.benchmark.plan import DEFAULT_FILL, RunSpec, recorded_fill
from roar.fingerprint import canonical_json, fingerprint_key

DB_NAME = "results.db"
STATUSES = ("done", "failed")
# The design's results.csv columns (DESIGN.md, "Benchmark output folder"), then the bookkeeping.
CSV_COLUMNS = ("dataset", "model", "method", "mode", "fill", "threshold", "seed", "test_acc", "epochs", "seconds", "checkpoint", "status", "error")
COLUMNS = (
    "run_id", "dataset", "model", "method", "mode", "threshold", "seed", "status", "test_acc",
    "epochs", "seconds", "checkpoint", "error", "config", "finished_at", "fingerprint", "settings_key", "provenance", "fill",
)  # fmt: skip
SCHEMA_VERSION = 3
"""3: the ``fill`` column (a grid runs several fills, ``mode@fill``). A version 2 database (roar 0.3.0)
gains it when opened for writing, each row's fill read from its config; read-only, its rows get it the same way."""
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    dataset     TEXT NOT NULL,
    model       TEXT NOT NULL,
    method      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    threshold   REAL NOT NULL,
    seed        INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    test_acc    REAL,
    epochs      INTEGER,
    seconds     REAL,
    checkpoint  TEXT,
    error       TEXT,
    config      TEXT,
    finished_at TEXT NOT NULL,
    fingerprint TEXT,
    settings_key TEXT,
    provenance  TEXT,
    fill        TEXT NOT NULL DEFAULT 'channel_mean'
)
"""
_ORDER = "ORDER BY dataset, model, mode, fill, method, threshold, seed"


def _add_fill_column(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3, inside the caller's transaction: each row's fill is the one its config recorded
    (roar 0.3.0 ran a whole grid under ``protocol.fill``)."""
    conn.execute(f"ALTER TABLE runs ADD COLUMN fill TEXT NOT NULL DEFAULT '{DEFAULT_FILL}'")
    for run_id, config in conn.execute("SELECT run_id, config FROM runs").fetchall():
        fill = recorded_fill({"config": config})
        if fill != DEFAULT_FILL:
            conn.execute("UPDATE runs SET fill = ? WHERE run_id = ?", (fill, run_id))


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write result rows as the design's ``results.csv`` (:data:`CSV_COLUMNS`, extra keys dropped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    tmp.replace(path)  # a reader never sees a half-written file
    return path


class UnreadableResultsError(ValueError):
    """``results.db`` is damaged: its rows are neither resumed nor reported (``--force`` replaces it)."""


class ResultsStore:
    """One row per finished (or failed) run, in ``results.db``.

    Args:
        path: the database file, or a folder (then ``<folder>/results.db``); created if missing.

    Example:
        >>> store = ResultsStore(out / "results.db")  # doctest: +SKIP
        >>> todo = [s for s in plan if s.run_id not in store.finished_ids()]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, read_only: bool = False, replace_unreadable: bool = False) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / DB_NAME
        self.path = path
        self.read_only = read_only
        if read_only:  # an archived (read-only) folder: open it as it is, write nothing
            if not path.is_file():
                raise FileNotFoundError(f"no results database at {path}")
            with self._connect() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (2, SCHEMA_VERSION):
                raise ValueError(f"{path} has results schema version {version}; this roar reads versions 2 and {SCHEMA_VERSION}")
            self._columns = COLUMNS if version == SCHEMA_VERSION else COLUMNS[:-1]  # version 2: fills from the configs
            return
        self._columns = COLUMNS
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as err:  # a damaged file (a disk full, a hand edit): never read past it
            if not replace_unreadable:
                raise UnreadableResultsError(
                    f"{path} is not a readable results database ({err}); its runs cannot be trusted or resumed: "
                    "restore it from a copy, use a new --out, or --force true to start this folder afresh"
                ) from None
            for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            self._open()

    def _open(self) -> None:
        """Create (or upgrade) the schema: raises :class:`sqlite3.DatabaseError` on a damaged file."""
        path = self.path
        with self._connect() as conn:
            # WAL is a property of the database file: set once, every later connection uses it.
            conn.execute("PRAGMA journal_mode=WAL")
            damage = conn.execute("PRAGMA quick_check").fetchone()[0]  # a damaged page reads wrong rows, not always an error
            if damage != "ok":
                problems = [line for line in str(damage).splitlines() if not line.startswith("***")]
                raise sqlite3.DatabaseError(f"damaged: {'; '.join(problems[:2])}{' ...' if len(problems) > 2 else ''}")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 2:  # roar 0.3.0's results: kept, with the fill each row recorded
                _add_fill_column(conn)
            if version in (0, 2):
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            if version not in (0, 2, SCHEMA_VERSION):
                raise ValueError(
                    f"{path} has results schema version {version} (an older roar, whose rows carry no fingerprint); "
                    f"this roar reads version {SCHEMA_VERSION}: use a new --out, or delete {path} to rerun the grid here"
                )

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # autocommit mode (isolation_level=None): transactions are explicit BEGIN IMMEDIATE ... COMMIT,
        # which takes the write lock up front so concurrent writers queue on the busy timeout
        # instead of deadlocking on a read-to-write lock upgrade.
        if self.read_only:
            # immutable: no journal, no lock files, so a folder on read-only storage can be read; a
            # leftover write-ahead log (a benchmark that was killed) must be read too, so then plain ro
            wal = self.path.with_name(self.path.name + "-wal")
            flags = "mode=ro" if wal.exists() and wal.stat().st_size else "mode=ro&immutable=1"
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?{flags}", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def record(
        self,
        spec: RunSpec,
        *,
        status: str,
        test_acc: float | None = None,
        epochs: int | None = None,
        seconds: float | None = None,
        checkpoint: str | Path | None = None,
        error: str | None = None,
        config: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        """Record one run atomically, replacing any earlier row of the same run id.

        Args:
            spec: the run.
            status: ``done`` or ``failed``.
            test_acc: test accuracy in [0, 1]; required when done, must be None when failed.
            epochs: epochs trained (0 for noretrain).
            seconds: wall time of the run.
            checkpoint: path of the run's final checkpoint, if kept.
            error: the traceback of a failed run.
            config: the run's full protocol config (granularity, score, fill, target...), stored as JSON.
            provenance: the run's fingerprint (:meth:`~roar.benchmark.provenance.GridProvenance.for_run`);
                its key is the row's ``fingerprint`` and the key of its settings and base model
                the row's ``settings_key``.

        Raises:
            ValueError: an unknown status, or a test accuracy that does not fit the status.
        """
        if not isinstance(spec, RunSpec):
            raise ValueError(f"spec must be a RunSpec, got {type(spec).__name__}")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid statuses: {', '.join(STATUSES)}")
        if status == "done":
            if test_acc is None or not math.isfinite(float(test_acc)) or not 0 <= float(test_acc) <= 1:
                raise ValueError(f"a done run needs a test accuracy in [0, 1], got {test_acc!r} for {spec.run_id}")
            test_acc = float(test_acc)
        elif test_acc is not None:
            raise ValueError(f"a failed run has no test accuracy, got {test_acc!r} for {spec.run_id}")
        # Serialise before the transaction: a config that cannot be stored fails without touching the db.
        config_json = None if config is None else json.dumps(config, sort_keys=True, default=str)
        fingerprint = settings_key = provenance_json = None
        if provenance is not None:
            fingerprint = fingerprint_key(provenance)
            settings_key = fingerprint_key({k: provenance.get(k) for k in ("settings", "base_checkpoint_sha256")})
            provenance_json = canonical_json(provenance)
        values = (
            spec.run_id, spec.dataset, spec.model, spec.method, spec.mode, spec.threshold, spec.seed, status,
            test_acc, None if epochs is None else int(epochs), None if seconds is None else float(seconds),
            None if checkpoint is None else str(checkpoint), error, config_json,
            datetime.now(timezone.utc).isoformat(timespec="seconds"), fingerprint, settings_key, provenance_json, spec.fill,
        )  # fmt: skip
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # OR REPLACE: a rerun (--force, or a retried failure) overwrites, never duplicates.
                conn.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def finished_ids(self, include_failed: bool = False) -> set[str]:
        """Run ids a resumed benchmark skips: done runs (failed ones are retried unless ``include_failed``)."""
        statuses = STATUSES if include_failed else ("done",)
        with self._connect() as conn:
            cursor = conn.execute(f"SELECT run_id FROM runs WHERE status IN ({', '.join('?' * len(statuses))})", statuses)
            return {row[0] for row in cursor}

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every recorded run as a dict (``config`` decoded), optionally only ``done`` or ``failed`` ones."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; valid statuses: {', '.join(STATUSES)} (or None for all)")
        query, params = f"SELECT {', '.join(self._columns)} FROM runs", ()
        if status is not None:
            query, params = query + " WHERE status = ?", (status,)
        with self._connect() as conn:
            order = _ORDER if "fill" in self._columns else _ORDER.replace(" fill,", "")
            rows = [dict(row) for row in conn.execute(f"{query} {order}", params)]
        for row in rows:
            if "fill" not in row:  # a read-only version 2 database
                row["fill"] = recorded_fill(row)
            for key in ("config", "provenance"):
                row[key] = None if row[key] is None else json.loads(row[key])
        return rows

    def failures(self) -> list[dict[str, Any]]:
        """The failed runs, with their errors."""
        return self.rows(status="failed")

    def counts(self) -> dict[str, int]:
        """Number of runs per status, e.g. ``{"done": 12, "failed": 1}``."""
        with self._connect() as conn:
            found = dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def __len__(self) -> int:
        return sum(self.counts().values())

    def export_csv(self, path: str | Path) -> Path:
        """Write ``results.csv``: the design's columns first, then ``status`` and ``error``."""
        return write_csv(self.rows(), path)

    def clear(self) -> None:
        """Forget every recorded run (``--force``)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM runs")
            conn.execute("COMMIT")
