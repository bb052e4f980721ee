"""The serving log in SQLite: which version answered each request, shadow pairs, drops, swaps.

Writers never block a response: rows go to a bounded queue drained by one writer thread, which
retries failed writes and counts what it could not keep, so a locked or full disk shows up in
/health instead of killing logging. Prompts and outputs are stored as SHA-256 and length unless
the operator asks for the raw text (`--log-prompts`). Shadow pairs are also counted per minute in
`shadow_rollup`, in the same transaction, so `shadow-report` reads a few thousand rows instead of
every pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tuneledger.core.errors import first_line
from tuneledger.core.secrets import redact

logger = logging.getLogger(__name__)

DEFAULT_DB = Path(".tuneledger/serve.sqlite")
DEFAULT_QUEUE = 10_000
BATCH = 500
WRITE_TIMEOUT_S = 2.0  # a locked database fails a write after this long; the writer retries
MAX_BACKOFF_S = 5.0
PRUNE_EVERY_S = 3600.0
PRUNE_EVERY_ROWS = 10_000  # and after this many rows, so a flood meets the size cap within minutes
# What a row keeps of the strings a client controls (paths, error messages that quote a field).
CLIPPED = {
    "arm": 16,
    "path": 256,
    "method": 16,
    "error": 500,
    "finish_reason": 32,
    "version": 64,
    "content_id": 64,
}
LATENCY_SAMPLE = 10_000  # latency percentiles come from the newest pairs, at most this many

TABLES = {
    "requests": [
        "time REAL", "method TEXT", "path TEXT", "status INTEGER", "request_hash TEXT", "version TEXT",
        "content_id TEXT", "latency_ms REAL", "finish_reason TEXT", "error TEXT",
        "prompt TEXT", "prompt_sha256 TEXT", "prompt_chars INTEGER",
        "output TEXT", "output_sha256 TEXT", "output_chars INTEGER",
        "arm TEXT", "completion_tokens INTEGER",
    ],
    "shadow_pairs": [
        "time REAL", "request_hash TEXT", "prompt TEXT", "prod_output TEXT", "shadow_output TEXT",
        "exact_agreement INTEGER", "token_agreement REAL", "prod_latency_ms REAL",
        "shadow_latency_ms REAL", "prod_version TEXT", "prod_content_id TEXT", "shadow_version TEXT",
        "shadow_content_id TEXT", "error TEXT",
        "prompt_sha256 TEXT", "prompt_chars INTEGER", "prod_output_sha256 TEXT",
        "prod_output_chars INTEGER", "shadow_output_sha256 TEXT", "shadow_output_chars INTEGER",
    ],
    "shadow_drops": ["time REAL", "request_hash TEXT", "shadow_version TEXT"],
    # Requests refused before any route (wrong key, host, origin or media type, unknown path): counted
    # per minute and status rather than stored, so unauthenticated traffic cannot fill the disk.
    "refusals": ["minute INTEGER", "status INTEGER", "count INTEGER"],
    "events": [
        "time REAL", "event TEXT", "role TEXT", "name TEXT", "stage TEXT", "version TEXT",
        "content_id TEXT", "error TEXT",
    ],
}  # fmt: skip
# Rows older than the retention period go; events (which version served when) are kept.
PRUNED = ("requests", "shadow_pairs", "shadow_drops")

ROLLUP = """
CREATE TABLE IF NOT EXISTS shadow_rollup (
    shadow_version TEXT NOT NULL, minute INTEGER NOT NULL, pairs INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0, exact_agreements INTEGER NOT NULL DEFAULT 0,
    token_agreement_sum REAL NOT NULL DEFAULT 0, drops INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (shadow_version, minute)) WITHOUT ROWID;
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_arm_time ON requests(arm, time);
CREATE INDEX IF NOT EXISTS shadow_pairs_time ON shadow_pairs(time);
CREATE INDEX IF NOT EXISTS shadow_pairs_version_time ON shadow_pairs(shadow_version, time);
CREATE INDEX IF NOT EXISTS shadow_drops_time ON shadow_drops(time);
CREATE UNIQUE INDEX IF NOT EXISTS refusals_minute_status ON refusals(minute, status);
"""
_COUNT_REFUSALS = """
INSERT INTO refusals (minute, status, count) VALUES (:minute, :status, :count)
ON CONFLICT (minute, status) DO UPDATE SET count = count + excluded.count
"""
_ADD_TO_ROLLUP = """
INSERT INTO shadow_rollup (shadow_version, minute, pairs, errors, exact_agreements,
                           token_agreement_sum, drops)
VALUES (:shadow_version, :minute, :pairs, :errors, :exact_agreements, :token_agreement_sum, :drops)
ON CONFLICT (shadow_version, minute) DO UPDATE SET
    pairs = pairs + excluded.pairs, errors = errors + excluded.errors,
    exact_agreements = exact_agreements + excluded.exact_agreements,
    token_agreement_sum = token_agreement_sum + excluded.token_agreement_sum,
    drops = drops + excluded.drops
"""
_REBUILD_ROLLUP = """
DELETE FROM shadow_rollup;
INSERT INTO shadow_rollup (shadow_version, minute, pairs, errors, exact_agreements,
                           token_agreement_sum, drops)
SELECT COALESCE(shadow_version, ''), CAST(time / 60 AS INTEGER), SUM(error IS NULL), SUM(error IS NOT NULL),
       TOTAL(CASE WHEN error IS NULL THEN exact_agreement END),
       TOTAL(CASE WHEN error IS NULL THEN token_agreement END), 0
FROM shadow_pairs GROUP BY 1, 2;
INSERT INTO shadow_rollup (shadow_version, minute, drops)
SELECT COALESCE(shadow_version, ''), CAST(time / 60 AS INTEGER), COUNT(*) FROM shadow_drops GROUP BY 1, 2
ON CONFLICT (shadow_version, minute) DO UPDATE SET drops = drops + excluded.drops;
"""


def connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (and create or upgrade) the serving log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    existing = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, columns in TABLES.items():
        if table not in existing:
            db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            continue
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:  # a log written by an older version gains the new columns
            if column.split()[0] not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    db.executescript(ROLLUP + INDEXES)
    if "shadow_rollup" not in existing and "shadow_pairs" in existing:
        rebuild_rollup(db)
    db.commit()
    return db


def rebuild_rollup(db: sqlite3.Connection) -> None:
    """Recount `shadow_rollup` from every pair and drop (a log from before the rollup existed)."""
    with db:
        db.executescript(f"BEGIN; {_REBUILD_ROLLUP} COMMIT;")


def text_fields(name: str, text: str | None, keep_raw: bool) -> dict[str, Any]:
    """A prompt or output as log columns: SHA-256 and length, and the text itself (redacted) only if
    kept."""
    if text is None:
        return {name: None, f"{name}_sha256": None, f"{name}_chars": None}
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return {name: redact(text) if keep_raw else None, f"{name}_sha256": digest, f"{name}_chars": len(text)}


def clipped(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with each client-controlled string cut to its CLIPPED length."""
    return {
        key: value[: CLIPPED[key]] if key in CLIPPED and isinstance(value, str) else value
        for key, value in row.items()
    }


def short_error(exc: BaseException) -> str:
    """One line for the log: the exception's type and first line, without secrets."""
    line, kind = first_line(exc), type(exc).__name__
    return redact(line if line == kind else f"{kind}: {line}")[:500]


def _rollup_rows(batch: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """Per (shadow version, minute): pairs, errors, exact agreements, token agreement sum, drops."""
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for table, row in batch:
        if table not in ("shadow_pairs", "shadow_drops"):
            continue
        version, minute = row.get("shadow_version") or "", int(row["time"] // 60)
        counts = totals.setdefault(
            (version, minute),
            {
                "shadow_version": version,
                "minute": minute,
                "pairs": 0,
                "errors": 0,
                "exact_agreements": 0,
                "token_agreement_sum": 0.0,
                "drops": 0,
            },
        )
        if table == "shadow_drops":
            counts["drops"] += 1
        elif row.get("error") is not None:
            counts["errors"] += 1
        else:
            counts["pairs"] += 1
            counts["exact_agreements"] += int(row.get("exact_agreement") or 0)
            counts["token_agreement_sum"] += float(row.get("token_agreement") or 0.0)
    return list(totals.values())


def write_batch(db: sqlite3.Connection, batch: list[tuple[str, dict]]) -> None:
    """Insert rows and their rollup counts in one transaction: all of them or none."""
    with db:
        for table, row in batch:
            if table == "refusals":
                db.execute(_COUNT_REFUSALS, row)
                continue
            columns = ", ".join(row)
            db.execute(
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
        db.executemany(_ADD_TO_ROLLUP, _rollup_rows(batch))


def prune(db: sqlite3.Connection, older_than: float, chunk: int = 10_000) -> int:
    """Delete request and shadow rows before `older_than` (epoch seconds), a chunk at a time so
    a large backlog never holds the write lock for long. Returns how many rows went."""
    removed = 0
    for table in PRUNED:
        while True:
            with db:
                done = db.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE time < ? LIMIT ?)",
                    [older_than, chunk],
                ).rowcount
            removed += done
            if done < chunk:
                break
    with db:
        db.execute("DELETE FROM shadow_rollup WHERE minute < ?", [int(older_than // 60)])
        db.execute("DELETE FROM refusals WHERE minute < ?", [int(older_than // 60)])
    return removed


PAGE_FACTS = ("page_count", "freelist_count", "page_size")


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes the log's pages hold (free pages, which new rows reuse, not counted)."""
    (pages,), (free,), (size,) = (
        db.execute(f"PRAGMA {name}").fetchone() for name in ("page_count", "freelist_count", "page_size")
    )
    return (pages - free) * size


def prune_to_size(db: sqlite3.Connection, max_bytes: int, chunk: int = 10_000) -> int:
    """Delete the oldest request and shadow rows, a chunk at a time, until the log holds at most
    `max_bytes` (events, rollups and refusal counts are small and kept). Returns how many rows went."""
    removed = 0
    while used_bytes(db) > max_bytes:
        done = 0
        for table in PRUNED:
            with db:
                done += db.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY time LIMIT ?)",
                    [chunk],
                ).rowcount
        if done == 0:
            break
        removed += done
    return removed


_WAKE_UP = object()  # put by close() so the writer need not wait out its poll


def _transient(exc: BaseException) -> bool:
    """A failure that waiting can cure (a lock, a full or missing disk), not a refused row."""
    if isinstance(exc, OSError):
        return True
    message = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in message for word in ("locked", "busy", "full", "disk", "i/o", "unable to open", "readonly")
    )


class LogWriter:
    """A background thread that batches inserts, so logging costs a response nothing but a put.

    The queue is bounded: when the database cannot keep up (locked, disk full), new rows are
    dropped and counted rather than held in memory. A failed write is retried with backoff until
    it succeeds; the writer's state is in `health()`.
    """

    def __init__(
        self,
        path: Path,
        queue_size: int = DEFAULT_QUEUE,
        retention_days: float | None = None,
        max_mb: float | None = None,
    ):
        self.path = Path(path)
        self.retention_days = retention_days or None  # 0 keeps rows whatever their age
        self.max_bytes = int(max_mb * 1024 * 1024) if max_mb else None  # 0: no size cap
        self._rows_since_prune = 0
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._counts_lock = threading.Lock()
        self.written = self.dropped = self.write_errors = self.lost = self.pruned = 0  # rows
        self.last_error: str | None = None
        self.failing = False
        self._closing = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._next_prune = 0.0
        self.thread = threading.Thread(target=self._run, name="serve-log", daemon=True)
        self.thread.start()

    def insert(self, table: str, **row: Any) -> bool:
        """Queue a row; False (and a counted drop) when the queue is full."""
        try:
            self.queue.put_nowait((table, row))
            return True
        except queue.Full:
            with self._counts_lock:
                self.dropped += 1
            return False

    def count_refusal(self, status: int, when: float) -> None:
        """Count a request refused before any route; the writer sums these per minute."""
        self.insert("refusals", minute=int(when // 60), status=status, count=1)

    def health(self) -> dict[str, Any]:
        return {
            "healthy": self.thread.is_alive() and not self.failing,
            "queued": self.queue.qsize(),
            "queue_size": self.queue.maxsize,
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "lost": self.lost,
            "last_error": self.last_error,
        }

    def _take(self, batch: list) -> None:
        """Add queued rows to `batch` (waiting up to a second for the first one)."""
        try:
            batch.append(self.queue.get(timeout=1.0))
        except queue.Empty:
            return
        while len(batch) < BATCH:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        batch[:] = [item for item in batch if item is not _WAKE_UP]

    def _run(self) -> None:
        """Never ends but by close(): any failure is counted, shown in health() and retried."""
        batch: list = []
        backoff = 0.1
        while True:
            closing = self._closing.is_set()
            if not batch:
                self._take(batch)
            if batch:
                if self._write(batch):
                    batch, backoff = [], 0.1
                elif closing:  # one last try failed: give up on these rows, counted
                    self.lost += len(batch)
                    return
                else:
                    self._closing.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
            if closing and self.queue.empty():
                return
            self._prune_if_due()

    def _write(self, batch: list) -> bool:
        """True when the batch is done with (written, or its unwritable rows counted as lost);
        False to retry it after a backoff."""
        try:
            if self._db is None:
                self._db = connect(self.path, timeout=WRITE_TIMEOUT_S)
            write_batch(self._db, batch)
        except (sqlite3.Error, OSError) as exc:
            self._count_error(exc)
            if _transient(exc) or not self._database_answers():  # locked, full, gone or corrupt
                self._reset_connection()
                return False
            self._write_one_by_one(batch)  # a row the schema refuses must not block the others
            return True
        self._wrote(len(batch))
        return True

    def _database_answers(self) -> bool:
        """Whether the open database reads at all: if not, every row would fail, so retry later."""
        if self._db is None:
            return False
        try:
            self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            return False
        return True

    def _write_one_by_one(self, batch: list) -> None:
        for item in batch:
            try:
                write_batch(self._db, [item])
            except (sqlite3.Error, OSError) as exc:
                self._count_error(exc)
                self.lost += 1
                continue
            self._wrote(1)

    def _count_error(self, exc: BaseException) -> None:
        self.last_error, was_failing, self.failing = short_error(exc), self.failing, True
        with self._counts_lock:
            self.write_errors += 1
        if not was_failing:
            logger.error(f"cannot write the serving log {self.path} (retrying): {self.last_error}")

    def _wrote(self, rows: int) -> None:
        with self._counts_lock:
            self.written += rows
        self._rows_since_prune += rows
        if self.failing:
            logger.info(f"the serving log {self.path} is written again")
        self.failing = False

    def _reset_connection(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _prune_if_due(self) -> None:
        due = time.monotonic() >= self._next_prune or self._rows_since_prune >= PRUNE_EVERY_ROWS
        if not due or self._db is None or (self.retention_days is None and self.max_bytes is None):
            return
        self._next_prune, self._rows_since_prune = time.monotonic() + PRUNE_EVERY_S, 0
        try:
            if self.retention_days is not None:
                self.pruned += prune(self._db, time.time() - self.retention_days * 86400)
            if self.max_bytes is not None:
                self.pruned += prune_to_size(self._db, self.max_bytes)
        except sqlite3.Error as exc:  # retried at the next period; logging goes on
            self.last_error = short_error(exc)
            logger.warning(f"pruning the serving log failed (retried later): {self.last_error}")

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue means the writer is awake anyway
            self.queue.put_nowait(_WAKE_UP)
        self.thread.join(timeout=10)
        self._reset_connection()


def now() -> float:
    return time.time()
