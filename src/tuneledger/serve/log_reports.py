"""The serving log's read side: `shadow-report`, `canary-report`, the serving events `history`
shows, and `--since`. It opens the log read-only and closes it; the writer (serve.log) alone
creates and upgrades it."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneledger.core.errors import TuneLedgerError
from tuneledger.serve import log
from tuneledger.serve.log import LATENCY_SAMPLE

FIRST_RUN_HINT = "run `tuneledger serve` first"


@contextlib.contextmanager
def read_only(path: Path, hint: str = FIRST_RUN_HINT) -> Iterator[sqlite3.Connection]:
    """The log opened read-only, so a report never takes the writer's lock. A log written by an
    older version is upgraded first, once, by the writer's own code (columns and tables added)."""
    path = Path(path)
    if not path.is_file():
        raise TuneLedgerError(f"{path}: no serving log; {hint}")
    db = _open_read_only(path)
    if not _current(db):
        db.close()
        log.connect(path).close()
        db = _open_read_only(path)
    try:
        yield db
    except sqlite3.OperationalError as exc:
        raise TuneLedgerError(f"{path}: cannot read the serving log ({exc}); {hint} to upgrade it") from None
    finally:
        db.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)


def _current(db: sqlite3.Connection) -> bool:
    """Whether the log has every table and column this version reads."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= {*log.TABLES, "shadow_rollup"}:
        return False
    for table, columns in log.TABLES.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not {column.split()[0] for column in columns} <= have:
            return False
    return True


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """`--since`: a duration back from now (`90m`, `24h`, `7d`) or an ISO 8601 time (UTC if no zone)."""
    now = time.time() if now is None else now
    match = _DURATION.match(value.strip())
    if match:
        return now - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise TuneLedgerError(
            f"--since {value!r}: expected a duration such as 90m, 24h or 7d, or a time such as "
            "2025-01-31T12:00"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def shadow_report(
    path: Path, shadow_version: str | None = None, since: float | None = None
) -> dict[str, Any]:
    """Agreement and latency of shadow pairs (optionally of one shadow version, since a time).

    Counts and agreement are exact, summed from the per-minute rollup (`since` counts from the
    start of its minute). Latency percentiles come from the newest LATENCY_SAMPLE pairs, read
    through the (version, time) index: time and memory stay flat as the log grows.
    """
    with read_only(path, "run `tuneledger serve --shadow STAGE` first") as db:
        return _report(db, str(path), shadow_version, since)


def _filter(shadow_version: str | None, time_column: str, start: float | None) -> tuple[str, list]:
    conditions, args = [], []
    if shadow_version:
        conditions.append("shadow_version = ?")
        args.append(shadow_version)
    if start is not None:
        conditions.append(f"{time_column} >= ?")
        args.append(start)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), args


def _report(db: sqlite3.Connection, path: str, shadow_version: str | None, since: float | None):
    minute = int(since // 60) if since is not None else None
    where, args = _filter(shadow_version, "minute", minute)
    pairs, errors, exact, token, drops = db.execute(
        "SELECT TOTAL(pairs), TOTAL(errors), TOTAL(exact_agreements), TOTAL(token_agreement_sum), "
        f"TOTAL(drops) FROM shadow_rollup {where}",
        args,
    ).fetchone()
    versions = db.execute(f"SELECT DISTINCT shadow_version FROM shadow_rollup {where} ORDER BY 1", args)
    where, args = _filter(shadow_version, "time", minute * 60 if minute is not None else None)
    sample = db.execute(
        f"SELECT prod_latency_ms, shadow_latency_ms, error FROM shadow_pairs {where} "
        f"ORDER BY time DESC LIMIT {LATENCY_SAMPLE}",
        args,
    ).fetchall()
    prod = [row[0] for row in sample if row[0] is not None]
    shadow = [row[1] for row in sample if row[2] is None and row[1] is not None]
    return {
        "db": path,
        "since": datetime.fromtimestamp(minute * 60, UTC).isoformat() if minute is not None else None,
        "shadow_versions": [v for (v,) in versions if v],
        "pairs": int(pairs),
        "errors": int(errors),
        "drops": int(drops),
        "exact_agreement": exact / pairs if pairs else None,
        "token_agreement": token / pairs if pairs else None,
        "latency_sample": len(sample),
        "prod_latency_ms": {"p50": _percentile(prod, 0.5), "p95": _percentile(prod, 0.95)},
        "shadow_latency_ms": {"p50": _percentile(shadow, 0.5), "p95": _percentile(shadow, 0.95)},
    }


def canary_report(path: Path, since: float | None = None, version: str | None = None) -> dict[str, Any]:
    """The two arms of `serve --canary` side by side: requests, server errors (5xx), latency
    percentiles and output tokens, per arm (the canary arm only of `version`, if given).
    Percentiles come from each arm's newest LATENCY_SAMPLE requests."""
    with read_only(path, "run `tuneledger serve --canary STAGE:PERCENT` first") as db:
        return {
            "db": str(path),
            "since": datetime.fromtimestamp(since, UTC).isoformat() if since is not None else None,
            "arms": {
                arm: _arm(db, arm, since, version if arm == "canary" else None)
                for arm in ("stable", "canary")
            },
        }


def _arm(db: sqlite3.Connection, arm: str, since: float | None, version: str | None) -> dict[str, Any]:
    conditions, args = ["arm = ?"], [arm]
    if since is not None:
        conditions.append("time >= ?")
        args.append(since)
    if version is not None:
        conditions.append("version = ?")
        args.append(version)
    where = " AND ".join(conditions)
    requests, errors, tokens = db.execute(
        f"SELECT COUNT(*), TOTAL(status >= 500), TOTAL(completion_tokens) FROM requests WHERE {where}", args
    ).fetchone()
    versions = [
        v for (v,) in db.execute(f"SELECT DISTINCT version FROM requests WHERE {where} ORDER BY 1", args)
    ]
    latency = [
        ms
        for (ms,) in db.execute(
            f"SELECT latency_ms FROM requests WHERE {where} AND status = 200 ORDER BY time DESC "
            f"LIMIT {LATENCY_SAMPLE}",
            args,
        )
    ]
    return {
        "versions": [v for v in versions if v],
        "requests": requests,
        "errors": int(errors),
        "error_rate": errors / requests if requests else None,
        "latency_ms": {q: _percentile(latency, f) for q, f in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "output_tokens": int(tokens),
        "output_tokens_per_request": tokens / requests if requests else None,
    }


def serving_events(path: Path) -> list[dict[str, Any]]:
    """When each version started answering (or shadowing) in `tuneledger serve`, for `history`."""
    with read_only(path, "run `tuneledger serve` first") as db:
        rows = db.execute(
            "SELECT time, event, role, name, stage, version, content_id FROM events WHERE event != 'error'"
        ).fetchall()
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
