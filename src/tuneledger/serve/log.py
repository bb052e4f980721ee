"""The serving log in SQLite: which version answered each request, shadow pairs, drops, swaps.

Writers never block a response: prod requests are queued to one writer thread; the shadow
process writes its own rows. WAL mode lets both write while `shadow-report` reads.
"""

from __future__ import annotations

import queue
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_DB = Path(".tuneledger/serve.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    time REAL, request_hash TEXT, status INTEGER, version TEXT, content_id TEXT, latency_ms REAL);
CREATE TABLE IF NOT EXISTS shadow_pairs (
    time REAL, request_hash TEXT, prompt TEXT, prod_output TEXT, shadow_output TEXT,
    exact_agreement INTEGER, token_agreement REAL, prod_latency_ms REAL, shadow_latency_ms REAL,
    prod_version TEXT, prod_content_id TEXT, shadow_version TEXT, shadow_content_id TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS shadow_drops (time REAL, request_hash TEXT, shadow_version TEXT);
CREATE TABLE IF NOT EXISTS events (
    time REAL, event TEXT, role TEXT, name TEXT, stage TEXT, version TEXT, content_id TEXT);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
"""


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


class LogWriter:
    """A background thread that batches inserts, so logging costs a response nothing but a put."""

    def __init__(self, path: Path):
        self.path = path
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="serve-log", daemon=True)
        self.thread.start()

    def insert(self, table: str, **row: Any) -> None:
        self.queue.put((table, row))

    def _run(self) -> None:
        db = connect(self.path)
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            if any(item is None for item in batch):
                batch = [item for item in batch if item is not None]
                self._write(db, batch)
                return
            self._write(db, batch)

    @staticmethod
    def _write(db: sqlite3.Connection, batch: list) -> None:
        for table, row in batch:
            columns = ", ".join(row)
            db.execute(
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
        db.commit()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def shadow_report(path: Path, shadow_version: str | None = None) -> dict[str, Any]:
    """Agreement and latency of shadow pairs (optionally of one shadow version), and drops."""
    if not Path(path).is_file():
        from tuneledger.errors import TuneLedgerError

        raise TuneLedgerError(f"{path}: no serving log; run `tuneledger serve --shadow STAGE` first")
    db = connect(Path(path))
    where, args = ("WHERE shadow_version = ?", [shadow_version]) if shadow_version else ("", [])
    rows = db.execute(
        f"SELECT exact_agreement, token_agreement, prod_latency_ms, shadow_latency_ms, error, shadow_version "
        f"FROM shadow_pairs {where}",
        args,
    ).fetchall()
    drops = db.execute(f"SELECT COUNT(*) FROM shadow_drops {where}", args).fetchone()[0]
    ok = [r for r in rows if r[4] is None]
    versions = sorted({r[5] for r in rows if r[5]})
    return {
        "db": str(path),
        "shadow_versions": versions,
        "pairs": len(ok),
        "errors": len(rows) - len(ok),
        "drops": drops,
        "exact_agreement": statistics.fmean(r[0] for r in ok) if ok else None,
        "token_agreement": statistics.fmean(r[1] for r in ok) if ok else None,
        "prod_latency_ms": {
            "p50": _percentile([r[2] for r in rows], 0.5),
            "p95": _percentile([r[2] for r in rows], 0.95),
        },
        "shadow_latency_ms": {
            "p50": _percentile([r[3] for r in ok], 0.5),
            "p95": _percentile([r[3] for r in ok], 0.95),
        },
    }


def serving_events(path: Path) -> list[dict[str, Any]]:
    """When each version started answering (or shadowing) in `tuneledger serve`, for `history`."""
    from datetime import UTC, datetime

    rows = connect(Path(path)).execute(
        "SELECT time, event, role, name, stage, version, content_id FROM events"
    )
    return [
        {
            "time": datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"),
            "artifact": name,
            "event": f"{'serve' if role == 'prod' else 'shadow'} {event}",
            "version": version,
            "stage": stage,
            "content_id": content_id,
            "by": "tuneledger serve",
        }
        for t, event, role, name, stage, version, content_id in rows
    ]


def live_at(path: Path, when: float) -> dict[str, Any] | None:
    """Which prod version was answering at a time (the last swap before it)."""
    db = connect(Path(path))
    row = db.execute(
        "SELECT time, version, content_id FROM events WHERE role = 'prod' AND time <= ? "
        "ORDER BY time DESC LIMIT 1",
        [when],
    ).fetchone()
    return {"since": row[0], "version": row[1], "content_id": row[2]} if row else None


def now() -> float:
    return time.time()
